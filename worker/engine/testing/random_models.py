"""The built-in models with seeded random weights; they need no download.

- `"tiny"`: Stable-Diffusion-shaped and small, built offline from configs and cached on disk;
  tests and CPU demos use it.
- `"tiny-sd3"`: Stable-Diffusion-3-shaped and small (one transformer layer, 16-channel VAE
  with shift and scale, two small CLIP encoders with projection, no T5), built offline and
  cached on disk like `"tiny"` (inversion.md section 6).
- `"tiny-sdxl"`: SDXL-shaped and small (two small CLIP encoders, the second with
  projection, a UNet with the "text_time" added embedding), on disk like `"tiny"`.
- `"tiny-v"`: `"tiny"` with a v-predicting scheduler (the SD 2.x 768 shape), on disk.
- `"sd15-random"`: exactly Stable Diffusion 1.5's architecture (UNet, VAE, CLIP ViT-L/14 text
  encoder) with seeded random weights, built in memory. It costs the same compute as the real
  model, so benchmarks use it where the weights cannot be downloaded.

All come from one builder, `build_random_pipeline(spec)`; a `RandomModelSpec` (SD 1.x shape),
a `RandomSD3Spec` or a `RandomSDXLSpec` holds the component configs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

TINY_MODEL_NAME = "tiny"
TINY_SD3_MODEL_NAME = "tiny-sd3"
TINY_SDXL_MODEL_NAME = "tiny-sdxl"
TINY_V_MODEL_NAME = "tiny-v"
SD15_RANDOM_MODEL_NAME = "sd15-random"
TINY_SEED = 0

# SD 1.5's scheduler config (runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _sd_unet_config(
    *, block_out_channels: tuple[int, ...], layers_per_block: int, text_dim: int, latent_side: int
) -> dict[str, Any]:
    """Stable Diffusion's UNet layout at other widths: cross-attention to the text in every
    block but the lowest-resolution one, attention heads of 8 channels, 4 latent channels."""
    attention_blocks = len(block_out_channels) - 1
    return {
        "sample_size": latent_side,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": layers_per_block,
        "block_out_channels": block_out_channels,
        "down_block_types": ("CrossAttnDownBlock2D",) * attention_blocks + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * attention_blocks,
        "cross_attention_dim": text_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def _sd_vae_config(
    *, block_out_channels: tuple[int, ...], layers_per_block: int, norm_groups: int, size: int
) -> dict[str, Any]:
    """Stable Diffusion's VAE layout at other widths: four blocks (three 2x downsamplings,
    so vae_scale_factor 8) and 4 latent channels; `size` is the image side in pixels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": block_out_channels,
        "layers_per_block": layers_per_block,
        "latent_channels": 4,
        "norm_num_groups": norm_groups,
        "sample_size": size,
        "scaling_factor": 0.18215,
    }


@dataclass(frozen=True)
class RandomModelSpec:
    """Component configs of a Stable-Diffusion-shaped pipeline with seeded random weights.

    `text_encoder` is a CLIPTextConfig without the token ids, which come from the tokenizer
    (as does `vocab_size` when left out)."""

    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoder: Mapping[str, Any]
    prediction_type: str = "epsilon"  # the scheduler's: "v_prediction" for SD 2.x 768
    output_scale: float = 0.01  # the UNet's output layer scale (see `_calm_noise_estimate`)


TINY = RandomModelSpec(
    unet=_sd_unet_config(
        block_out_channels=(32, 64), layers_per_block=1, text_dim=32, latent_side=8
    ),
    vae=_sd_vae_config(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_groups=8, size=64
    ),
    text_encoder={
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
    },
)

# Stable Diffusion 1.5's component configs (stable-diffusion-v1-5: unet/, vae/ config.json;
# text_encoder/ is CLIP ViT-L/14's text tower). Defaults the configs leave out are diffusers'.
SD15_RANDOM = RandomModelSpec(
    unet=_sd_unet_config(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, text_dim=768, latent_side=64
    ),
    vae=_sd_vae_config(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_groups=32, size=512
    ),
    text_encoder={
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
)


@dataclass(frozen=True)
class RandomSD3Spec:
    """Component configs of a Stable-Diffusion-3-shaped pipeline with seeded random weights
    and no T5 encoder. `text_encoder` and `text_encoder_2` are CLIPTextConfigs (with
    projection) without the token ids, which come from the tokenizer."""

    transformer: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoder: Mapping[str, Any]
    text_encoder_2: Mapping[str, Any]
    scheduler: Mapping[str, Any]


_TINY_SD3_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,  # SD 3 reads the penultimate hidden state
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,  # two pooled embeddings of 32 = pooled_projection_dim
}

# inversion.md section 6: the configuration verified to build offline with diffusers 0.42.
TINY_SD3 = RandomSD3Spec(
    transformer={
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "joint_attention_dim": 64,  # = the two CLIPs' widths side by side, and T5's
        "caption_projection_dim": 32,
        "pooled_projection_dim": 64,
        "pos_embed_max_size": 16,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (16, 16, 16, 16),
        "layers_per_block": 1,
        "latent_channels": 16,
        "norm_num_groups": 4,
        "sample_size": 64,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 1.5305,  # SD 3's
        "shift_factor": 0.0609,
    },
    text_encoder=_TINY_SD3_CLIP,
    text_encoder_2=_TINY_SD3_CLIP,
    scheduler={"num_train_timesteps": 1000, "shift": 3.0},  # SD 3 / 3.5's
)

# --- SDXL and v-prediction test models --------------------------------------------------


@dataclass(frozen=True)
class RandomSDXLSpec:
    """Component configs of an SDXL-shaped pipeline with seeded random weights:
    `text_encoder` a CLIPTextConfig, `text_encoder_2` one with projection (its pooled
    embedding is the UNet's text_embeds), both without token ids."""

    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoder: Mapping[str, Any]
    text_encoder_2: Mapping[str, Any]
    # The UNet's output layer scale (see `_calm_noise_estimate`). SDXL's latents are small
    # (VAE scale 0.13025): at x0.01 the DDIM round trip missed by 32% (relative, 10 steps),
    # at x0.001 by 1.1%.
    output_scale: float = 0.001


_TINY_SDXL_TIME_EMBED = 8  # per time id; 6 time ids + the 32-wide pooled text embedding
TINY_SDXL = RandomSDXLSpec(
    unet={
        **_sd_unet_config(
            block_out_channels=(32, 64), layers_per_block=1, text_dim=64, latent_side=8
        ),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": _TINY_SDXL_TIME_EMBED,
        "projection_class_embeddings_input_dim": 6 * _TINY_SDXL_TIME_EMBED + 32,
        "use_linear_projection": True,  # SDXL's
    },
    vae={
        **_sd_vae_config(
            block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_groups=8, size=64
        ),
        "scaling_factor": 0.13025,  # SDXL's
        "force_upcast": True,
    },
    text_encoder=_TINY_SD3_CLIP,  # hidden 32 each: the UNet's cross-attention reads 64
    text_encoder_2=_TINY_SD3_CLIP,
)

TINY_V = dataclasses.replace(TINY, prediction_type="v_prediction")

RANDOM_MODELS: dict[str, RandomModelSpec | RandomSD3Spec | RandomSDXLSpec] = {
    TINY_MODEL_NAME: TINY,
    SD15_RANDOM_MODEL_NAME: SD15_RANDOM,
    TINY_SD3_MODEL_NAME: TINY_SD3,
}
RANDOM_MODELS.update({TINY_SDXL_MODEL_NAME: TINY_SDXL, TINY_V_MODEL_NAME: TINY_V})
# The small ones, built once into a folder and loaded from there.
ON_DISK_MODELS = (TINY_MODEL_NAME, TINY_SD3_MODEL_NAME, TINY_SDXL_MODEL_NAME, TINY_V_MODEL_NAME)


# --- building -----------------------------------------------------------------------------


def build_random_pipeline(spec: RandomModelSpec | RandomSD3Spec | RandomSDXLSpec) -> Any:
    """A StableDiffusionPipeline (StableDiffusion3Pipeline for a `RandomSD3Spec`) with
    `spec`'s shapes and seeded random weights (float32).

    Each network is initialised right after seeding with TINY_SEED, so a build is identical
    every time and does not disturb the caller's random state. The tokenizer is the tiny
    byte-level one (its ids fit CLIP's vocabulary too).
    """
    if isinstance(spec, RandomSD3Spec):
        return build_random_sd3_pipeline(spec)
    if isinstance(spec, RandomSDXLSpec):
        return build_random_sdxl_pipeline(spec)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="latentmix-tokenizer-") as tmp:
        tokenizer = build_tokenizer(Path(tmp) / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        return StableDiffusionPipeline(
            vae=_seeded(lambda: build_vae(spec)),
            text_encoder=_seeded(lambda: build_text_encoder(spec, tokenizer)),
            tokenizer=tokenizer,
            unet=_seeded(lambda: build_unet(spec)),
            scheduler=DDIMScheduler(
                **{**SD15_SCHEDULER_CONFIG, "prediction_type": spec.prediction_type}
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def build_random_sd3_pipeline(spec: RandomSD3Spec) -> Any:
    """A StableDiffusion3Pipeline without T5 (its embedding part is then zeros), each network
    seeded on its own; the two CLIP encoders get seeds TINY_SEED and TINY_SEED + 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    with tempfile.TemporaryDirectory(prefix="latentmix-tokenizer-") as tmp:
        tokenizer = build_tokenizer(Path(tmp) / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        return StableDiffusion3Pipeline(
            transformer=_seeded(lambda: build_transformer(spec)),
            scheduler=FlowMatchEulerDiscreteScheduler(**spec.scheduler),
            vae=_seeded(lambda: build_vae(spec)),
            text_encoder=_seeded(lambda: build_clip_with_projection(spec.text_encoder, tokenizer)),
            tokenizer=tokenizer,
            text_encoder_2=_seeded(
                lambda: build_clip_with_projection(spec.text_encoder_2, tokenizer), TINY_SEED + 1
            ),
            tokenizer_2=tokenizer,
            text_encoder_3=None,
            tokenizer_3=None,
        )


def build_random_sdxl_pipeline(spec: RandomSDXLSpec) -> Any:
    """A StableDiffusionXLPipeline (DDIM with SD's betas, no watermarker), each network
    seeded on its own; the two CLIP encoders get seeds TINY_SEED and TINY_SEED + 1."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    with tempfile.TemporaryDirectory(prefix="latentmix-tokenizer-") as tmp:
        tokenizer = build_tokenizer(Path(tmp) / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        return StableDiffusionXLPipeline(
            vae=_seeded(lambda: build_vae(spec)),
            text_encoder=_seeded(lambda: build_clip(spec.text_encoder, tokenizer)),
            text_encoder_2=_seeded(
                lambda: build_clip_with_projection(spec.text_encoder_2, tokenizer), TINY_SEED + 1
            ),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=_seeded(lambda: build_unet(spec)),
            scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG),
            add_watermarker=False,
        )


def build_transformer(spec: RandomSD3Spec) -> Any:
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel(**spec.transformer)
    _calm_velocity(transformer)
    return transformer


def build_clip_with_projection(config: Mapping[str, Any], tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    clip_config = CLIPTextConfig(
        **{"vocab_size": len(tokenizer), **config},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(clip_config).eval()


def build_unet(spec: RandomModelSpec | RandomSDXLSpec) -> Any:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**spec.unet)
    _calm_noise_estimate(unet, spec.output_scale)
    return unet


def build_vae(spec: RandomModelSpec | RandomSD3Spec | RandomSDXLSpec) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**spec.vae)


def build_text_encoder(spec: RandomModelSpec, tokenizer: Any) -> Any:
    return build_clip(spec.text_encoder, tokenizer)


def build_clip(text_encoder: Mapping[str, Any], tokenizer: Any) -> Any:
    """A CLIPTextModel (no projection) with `tokenizer`'s vocabulary and special ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **{"vocab_size": len(tokenizer), **text_encoder},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


_Built = TypeVar("_Built")


def _seeded(build: Callable[[], _Built], seed: int = TINY_SEED) -> _Built:
    torch.manual_seed(seed)
    return build()


def _calm_velocity(transformer: Any) -> None:
    """Shrink a random SD 3 transformer's output layer (x0.01), as `_calm_noise_estimate`
    does for the UNet: its velocity then varies slowly along the flow, like a trained
    model's, and round trips are close (inversion.md section 6)."""
    with torch.no_grad():
        transformer.proj_out.weight.mul_(0.01)
        transformer.proj_out.bias.mul_(0.01)


def _calm_noise_estimate(unet: Any, scale: float = 0.01) -> None:
    """Shrink a random UNet's output layer (x`scale`) so its noise estimate is small and
    smooth.

    A random UNet's eps swings wildly with its input, which breaks DDIM's assumption that eps
    varies slowly along the trajectory (round trips then miss by ~30x the latent). Scaled
    down, eps behaves like a trained model's.
    """
    if unet.conv_out.weight.is_meta:
        return
    with torch.no_grad():
        unet.conv_out.weight.mul_(scale)
        unet.conv_out.bias.mul_(scale)


# --- the small models on disk -------------------------------------------------------------


def ensure_random_model(name: str, path: Path) -> Path:
    """Build the on-disk built-in model `name` at `path` unless a complete one is there."""
    if name == TINY_MODEL_NAME:
        return ensure_tiny_model(path)
    if name not in ON_DISK_MODELS:
        raise ValueError(f"{name!r} is not built on disk; those that are: {list(ON_DISK_MODELS)}")
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    return _build_on_disk(RANDOM_MODELS[name], path)


def ensure_tiny_model(path: Path) -> Path:
    """Build the tiny model at `path` unless a complete one is already there."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    return build_tiny_model(path)


def build_tiny_model(path: Path) -> Path:
    """Build the tiny pipeline and save it at `path` (safetensors).

    Fully offline: configs only, tokenizer vocabulary generated here. Written to a temporary
    sibling directory and renamed into place, so concurrent workers never see half a model;
    if another process wins the race its copy is kept (the builds are identical).
    """
    return _build_on_disk(TINY, path)


def _build_on_disk(spec: RandomModelSpec | RandomSD3Spec | RandomSDXLSpec, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build_random_pipeline(spec).save_pretrained(tmp, safe_serialization=True)
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "model_index.json").is_file():
                raise  # not a lost race: a real error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --- the byte-level tokenizer both models share -------------------------------------------

_TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "tree", "red", "blue", "an")


def build_tokenizer(
    directory: Path, words: Sequence[str] = _TINY_WORDS, max_length: int = 77
) -> Any:
    """A byte-level BPE CLIPTokenizer from a small generated vocab.json + merges.txt in which
    each of `words` is one token (other text falls back to bytes)."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab_and_merges(words)
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_text, "utf-8")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=max_length)


def tiny_vocab_and_merges(
    words: Sequence[str] = _TINY_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout: 256 byte symbols, their "</w>" forms, merge results, special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right; every result joins the vocabulary
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in tokens:
                tokens.append(merged)
            pieces = [merged, *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))
