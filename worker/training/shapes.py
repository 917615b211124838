"""Train the `shapes` model and its classifier on the synthetic world (CPU, seeded).

    python -m latentmix.worker.training.shapes [--quick] [--out DIR]

Stages, in order: the classifier (shape, colour and background heads), the VAE (L1 + MSE +
KL), the latent scaling factor (1 / std of the training latents, as Stable Diffusion's 0.18215
was found), the UNet (SD 1.5's DDPM schedule, epsilon prediction, offset noise, Min-SNR loss
weights, 10% empty captions for classifier-free guidance, EMA), then the VAE's decoder alone
(the encoder frozen, so the latent space the UNet learnt stays as it is: how SD's ft-MSE VAE
was made).
The CLIP text encoder is random and frozen: its embeddings of the world's 97 captions are
distinct enough to condition on (the closest pair is printed), so training it buys little
here. Weights are stored as float16 safetensors: the pipeline as a
diffusers folder `OUT/pipeline` (DDIM sampler), the classifier as `OUT/classifier.safetensors`.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from latentmix.worker.engine.shapes import world
from latentmix.worker.engine.shapes.classifier import HEADS, ShapesClassifier
from latentmix.worker.engine.shapes.model import WEIGHTS_DIR
from latentmix.worker.engine.testing.random_models import SD15_SCHEDULER_CONFIG, build_tokenizer

MAX_TOKENS = 16  # "a magenta triangle on a white background" is 7 words + 2 specials
TEXT_ENCODER = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,  # 4x downsampling: 16 x 16 x 4 latents
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (16, 32, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": world.SIZE,
}
UNET = {
    "sample_size": world.SIZE // 4,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64, 128),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": TEXT_ENCODER["hidden_size"],
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}


@dataclass(frozen=True)
class Settings:
    """Everything that decides the result; `quick` is a tiny run for tests."""

    seed: int = 0
    images: int = 8192  # training images of the world (seed `seed`): classifier, VAE, decoder
    unet_images: int = 16384  # the UNet's (the first `images` of them are the same drawings)
    classifier_steps: int = 800
    classifier_batch: int = 64
    classifier_lr: float = 3e-3
    vae_steps: int = 900
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-4  # per latent value
    unet_steps: int = 6000
    decoder_steps: int = 600
    decoder_lr: float = 3e-4
    unet_batch: int = 32
    unet_lr: float = 8e-4
    unet_min_lr: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0  # loss weight min(SNR, gamma) / SNR (0: unweighted)
    offset_noise: float = 0.1  # std of a per-channel constant added to the training noise
    caption_dropout: float = 0.1  # empty caption: classifier-free guidance's unconditional
    short_caption_rate: float = 0.5  # "a red circle" instead of "... on a white background"
    checkpoint_every: int = 250  # UNet steps between saved pipelines (0: only at the end)


QUICK = Settings(
    images=64,
    unet_images=64,
    classifier_steps=3,
    classifier_batch=8,
    vae_steps=3,
    vae_batch=4,
    unet_steps=3,
    unet_batch=4,
    decoder_steps=2,
    warmup_steps=1,
    checkpoint_every=0,
)


# --- the parts --------------------------------------------------------------------------------


def build_tokenizer_for_world() -> Any:
    """Every word of the world one token. Longest words first: their merges then rank before
    a shorter word's pair that would split them ("g r" of "green" inside "background")."""
    words = sorted(world.vocabulary(), key=len, reverse=True)
    with tempfile.TemporaryDirectory(prefix="latentmix-shapes-tokenizer-") as tmp:
        return build_tokenizer(Path(tmp) / "tokenizer", words, MAX_TOKENS)


def build_text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_ENCODER,
    )
    return CLIPTextModel(config).eval().requires_grad_(False)


@torch.no_grad()
def embed_captions(tokenizer: Any, text_encoder: Any, captions: list[str]) -> torch.Tensor:
    """[len(captions), MAX_TOKENS, hidden] last hidden states, as the pipeline computes them."""
    ids = tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids)[0]


def closest_caption_distance(embeddings: torch.Tensor) -> float:
    flat = embeddings.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    return float(distances.min())


# --- data -------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """The training images ([N, 3, 64, 64] float in [0, 1]) and their attribute indices."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]  # head name -> [N] class index
    short_caption: list[int]  # index into world.all_captions()
    long_caption: list[int]


def make_dataset(count: int, seed: int) -> Dataset:
    captions = {text: i for i, text in enumerate(world.all_captions())}
    drawn = [world.sample(i, seed) for i in tqdm(range(count), desc="world", leave=False)]
    images = torch.from_numpy(np.stack([s.image for s in drawn])).permute(0, 3, 1, 2)
    labels = {
        "shape": [world.SHAPES.index(s.shape) for s in drawn],
        "colour": [world.COLOUR_NAMES.index(s.colour) for s in drawn],
        "background": [world.BACKGROUND_NAMES.index(s.background) for s in drawn],
    }
    return Dataset(
        images=images.contiguous(),
        labels={name: torch.tensor(value) for name, value in labels.items()},
        short_caption=[captions[s.short_caption] for s in drawn],
        long_caption=[captions[s.caption] for s in drawn],
    )


def batches(count: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless random batches of indices into `count` items: each epoch a fresh permutation."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch + 1, batch):
            yield order[start : start + batch]


def learning_rate(step: int, steps: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `peak` to `floor` at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


# --- stages -----------------------------------------------------------------------------------


def train_classifier(data: Dataset, settings: Settings, generator: torch.Generator) -> Any:
    """Cross-entropy on each head; light pixel noise so generated images' grain is familiar."""
    classifier = ShapesClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=settings.classifier_lr)
    order = batches(len(data.images), settings.classifier_batch, generator)
    bar = tqdm(range(settings.classifier_steps), desc="classifier")
    for _ in bar:
        index = next(order)
        images = data.images[index]
        images = images + 0.03 * torch.randn(images.shape, generator=generator)
        logits = classifier(images)
        loss = sum(F.cross_entropy(logits[h], data.labels[h][index]) for h in HEADS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    print(f"classifier: final loss {loss.item():.4f}")
    return classifier.eval()


def train_vae(data: Dataset, settings: Settings, generator: torch.Generator) -> Any:
    """L1 + MSE reconstruction of [-1, 1] pixels plus a small KL term (per latent value)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE)
    return _fit_vae(
        vae,
        list(vae.parameters()),
        data,
        settings,
        generator,
        stage="vae",
        steps=settings.vae_steps,
        lr=settings.vae_lr,
        kl_weight=settings.vae_kl_weight,
    )


def finetune_decoder(vae: Any, data: Dataset, settings: Settings, generator: torch.Generator):
    """L1 + MSE of the decoded posterior samples, with the encoder frozen: sharper
    reconstructions from the very latents the UNet was trained on."""
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for parameter in decoder:
        parameter.requires_grad_(True)
    return _fit_vae(
        vae,
        decoder,
        data,
        settings,
        generator,
        stage="decoder",
        steps=settings.decoder_steps,
        lr=settings.decoder_lr,
        kl_weight=0.0,
    )


def _fit_vae(
    vae: Any,
    parameters: list[torch.nn.Parameter],
    data: Dataset,
    settings: Settings,
    generator: torch.Generator,
    *,
    stage: str,
    steps: int,
    lr: float,
    kl_weight: float,
) -> Any:
    """Train `parameters` of `vae` to reconstruct [-1, 1] pixels from posterior samples: L1 +
    MSE, plus `kl_weight` x the KL term per latent value; AdamW, warm-up and cosine decay to
    lr / 10, gradients clipped to norm 1."""
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    order = batches(len(data.images), settings.vae_batch, generator)
    bar = tqdm(range(steps), desc=stage)
    for step in bar:
        pixels = data.images[next(order)] * 2 - 1
        posterior = vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels)
        if kl_weight:
            loss = loss + kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, settings.warmup_steps, lr, lr / 10)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    print(f"{stage}: final loss {loss.item():.4f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae: Any, data: Dataset, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of every training image."""
    means, stds = [], []
    for start in tqdm(range(0, len(data.images), batch), desc="encode", leave=False):
        posterior = vae.encode(data.images[start : start + batch] * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(means: torch.Tensor, stds: torch.Tensor, seed: int) -> float:
    """1 / std of sampled training latents: unit variance for the diffusion (Rombach et al.
    2022, sec. 4.3.2 and appendix G, how SD's 0.18215 was found)."""
    generator = torch.Generator().manual_seed(seed)
    z = means + stds * torch.randn(means.shape, generator=generator)
    return float(1.0 / z.std())


def train_unet(
    means: torch.Tensor,
    stds: torch.Tensor,
    scaling_factor: float,
    data: Dataset,
    embeddings: torch.Tensor,
    settings: Settings,
    generator: torch.Generator,
    save: Any,
) -> Any:
    """Epsilon prediction on SD 1.5's DDPM schedule; returns the EMA UNet. `save(unet, step)`
    stores a checkpoint every `settings.checkpoint_every` steps."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    scheduler = DDPMScheduler(
        **{k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"}
    )
    unet = UNet2DConditionModel(**UNET)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr)
    short = torch.tensor(data.short_caption)
    long = torch.tensor(data.long_caption)
    empty = len(embeddings) - 1  # the last embedding is the empty caption's
    order = batches(len(means), settings.unet_batch, generator)
    bar = tqdm(range(settings.unet_steps), desc="unet")
    for step in bar:
        index = next(order)
        n = len(index)
        noise_z = torch.randn(means[index].shape, generator=generator)
        latents = (means[index] + stds[index] * noise_z) * scaling_factor
        use_short = torch.rand(n, generator=generator) < settings.short_caption_rate
        caption = torch.where(use_short, short[index], long[index])
        dropped = torch.rand(n, generator=generator) < settings.caption_dropout
        caption = torch.where(dropped, torch.full_like(caption, empty), caption)
        noise = offset_noise(latents.shape, settings.offset_noise, generator)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (n,), generator=generator
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=embeddings[caption]).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (min_snr_weight(scheduler, timesteps, settings.min_snr_gamma) * per_sample).mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(
                step,
                settings.unet_steps,
                settings.warmup_steps,
                settings.unet_lr,
                settings.unet_min_lr,
            )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        _update_ema(ema, unet, min(settings.ema_decay, (1 + step) / (10 + step)))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0:
            save(ema, step + 1)
    print(f"unet: final loss {loss.item():.4f}")
    return ema.eval()


def offset_noise(shape: torch.Size, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus `offset` x a constant per image and channel (Guttenberg 2023,
    "Diffusion with offset noise"). SD 1.5's schedule keeps sqrt(alpha_bar) = 0.068 of the
    image at t = 999, so a model trained on plain noise reads each latent channel's mean
    (background and overall colour) from that leak instead of the caption; sampling starts
    from pure noise with no leak, and the background becomes whatever tint the noise's mean
    happens to carry. The offset hides the leak, so the caption has to decide it."""
    noise = torch.randn(shape, generator=generator)
    if offset == 0:
        return noise
    return noise + offset * torch.randn((*shape[:2], 1, 1), generator=generator)


def min_snr_weight(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction, min(SNR, gamma) / SNR (Hang et al.
    2023, eq. 7 with SNR = alpha_bar / (1 - alpha_bar)): the nearly clean timesteps, whose
    easy targets otherwise dominate the gradient, stop crowding out the noisy ones that decide
    shape and colour. Converges several times faster in their measurements."""
    if gamma <= 0:
        return torch.ones(len(timesteps))
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


@torch.no_grad()
def _update_ema(ema: Any, model: Any, decay: float) -> None:
    for target, source in zip(ema.parameters(), model.parameters(), strict=True):
        target.lerp_(source, 1 - decay)


# --- saving -----------------------------------------------------------------------------------


def save_pipeline(out: Path, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Path:
    """A float16 diffusers StableDiffusionPipeline folder with SD 1.5's DDIM sampler at
    `out / "pipeline"`, written beside and renamed into place."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).half(),
        text_encoder=copy.deepcopy(text_encoder).half(),
        tokenizer=tokenizer,
        unet=copy.deepcopy(unet).half(),
        scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = out / "pipeline"
    staging = out / ".pipeline-staging"
    pipe.save_pretrained(staging, safe_serialization=True)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    return target


def save_classifier(out: Path, classifier: Any) -> Path:
    from safetensors.torch import save_file

    path = out / "classifier.safetensors"
    save_file({k: v.half().contiguous() for k, v in classifier.state_dict().items()}, str(path))
    return path


def load_unet(out: Path) -> Any:
    """The UNet of a saved pipeline (to fine-tune only the decoder)."""
    from diffusers import UNet2DConditionModel

    folder = out / "pipeline" / "unet"
    return UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32).eval()


def load_parts(out: Path) -> tuple[Any, Any, Any]:
    """The VAE, text encoder and tokenizer of a saved pipeline (to train only the UNet)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = out / "pipeline"
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return vae.eval().requires_grad_(False), text_encoder.eval(), tokenizer


# --- the command ------------------------------------------------------------------------------


def train(out: Path, settings: Settings, stages: tuple[str, ...]) -> None:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    data = make_dataset(settings.images, settings.seed)
    print(f"world: {len(data.images)} training images, seed {settings.seed}")

    # Every stage draws from its own seeded stream and the UNet learns from the parts as they
    # ship (float16 weights), so a run of all stages and one of `unet,decoder` on its saved
    # parts give the same UNet.
    if "classifier" in stages:
        generator = seeded(settings.seed, "classifier")
        save_classifier(out, train_classifier(data, settings, generator))
    if "vae" in stages:
        generator = seeded(settings.seed, "vae")
        tokenizer = build_tokenizer_for_world()
        text_encoder = as_shipped(build_text_encoder(tokenizer))
        vae = as_shipped(train_vae(data, settings, generator))
    elif "unet" in stages or "decoder" in stages:
        vae, text_encoder, tokenizer = load_parts(out)
    if "unet" in stages:
        generator = seeded(settings.seed, "unet")
        same = settings.unet_images == settings.images
        unet_data = data if same else make_dataset(settings.unet_images, settings.seed)
        means, stds = encode_dataset(vae, unet_data)
        scaling_factor = latent_scaling_factor(means, stds, settings.seed)
        vae.register_to_config(scaling_factor=scaling_factor)
        print(f"latents: std {1 / scaling_factor:.4f}, scaling factor {scaling_factor:.5f}")
        captions = [*world.all_captions(), ""]
        embeddings = embed_captions(tokenizer, text_encoder, captions)
        closest = closest_caption_distance(embeddings)
        print(f"text: {len(captions)} caption embeddings, closest pair {closest:.3f} apart")

        def checkpoint(unet: Any, step: int) -> None:
            save_pipeline(out, vae, text_encoder, tokenizer, unet)
            tqdm.write(f"checkpoint: UNet step {step} saved ({time.monotonic() - started:.0f} s)")

        unet = train_unet(
            means, stds, scaling_factor, unet_data, embeddings, settings, generator, checkpoint
        )
        save_pipeline(out, vae, text_encoder, tokenizer, unet)
    elif "vae" in stages:
        print("vae trained but not saved: the pipeline is saved with a UNet (add the unet stage)")
    if "decoder" in stages:
        generator = seeded(settings.seed, "decoder")
        unet = unet if "unet" in stages else load_unet(out)
        vae = finetune_decoder(vae, data, settings, generator)
        save_pipeline(out, vae, text_encoder, tokenizer, unet)
    print(f"done in {time.monotonic() - started:.0f} s; weights in {out}")


STAGES = ("classifier", "vae", "unet", "decoder")
# Each stage's random stream. The classifier and the VAE draw from `seed` itself, as the
# first release did; the UNet and the decoder from streams of their own.
STAGE_STREAMS = {"classifier": 0, "vae": 0, "unet": 1, "decoder": 2}


def seeded(seed: int, stage: str) -> torch.Generator:
    """The stage's own random stream (and torch's global one, which initialises new modules),
    so a stage's result does not depend on which stages ran before it."""
    stage_seed = seed + (STAGE_STREAMS[stage] << 32)
    torch.manual_seed(stage_seed)
    return torch.Generator().manual_seed(stage_seed)


def as_shipped(model: Any) -> Any:
    """`model` with its weights rounded to float16, as `save_pipeline` stores them, kept in
    float32 for training."""
    return model.half().float()


OVERRIDABLE = (
    "images", "unet_images", "classifier_steps", "vae_steps", "unet_steps", "decoder_steps",
    "checkpoint_every",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train-shapes", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="default: %(default)s")
    parser.add_argument("--quick", action="store_true", help="a few steps on 64 images (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated subset of classifier,vae,unet,decoder (unet or decoder alone "
        "reuse the saved parts)",
    )
    for name in OVERRIDABLE:
        parser.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(stages) - set(STAGES)
    if unknown:
        print(
            f"unknown stage(s) {sorted(unknown)}; expected {', '.join(STAGES)}",
            file=sys.stderr,
        )
        return 2
    settings = replace(QUICK if args.quick else Settings(), seed=args.seed)
    overrides = {
        name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None
    }
    train(args.out, replace(settings, **overrides), stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
