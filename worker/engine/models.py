"""Loading Stable Diffusion pipelines, and the built-in tiny test model.

`load_model` is called once per worker process (load once, run many). It returns a
`LoadedModel`: the diffusers `StableDiffusionPipeline` with a `DDIMScheduler`, plus the
device, dtype and sizes the engine needs. `"tiny"` is a Stable-Diffusion-shaped model with
random weights, built offline from configs and cached on disk; tests and CPU demos use it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TINY_MODEL_NAME = "tiny"
DEFAULT_TINY_DIR = Path("data/models/tiny")  # relative to the working directory
TINY_SEED = 0
MODEL_ENV_VAR = "LATENTMIX_MODEL"

DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 16}

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

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class ModelLoadError(RuntimeError):
    """The model could not be loaded (offline, wrong path, missing files)."""


@dataclass
class LoadedModel:
    """A Stable Diffusion pipeline ready for inversion and generation."""

    name: str  # what the user asked for: hub id, local path or "tiny"
    pipe: Any  # diffusers.StableDiffusionPipeline with a DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    default_size: int  # image side in pixels the model was trained at
    max_batch_size: int

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for Stable Diffusion)."""
        return int(self.pipe.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for health endpoints and logs."""
        return {
            "name": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "default_size": self.default_size,
            "max_batch_size": self.max_batch_size,
            "latent_channels": self.latent_channels,
            "vae_scale_factor": self.vae_scale_factor,
            "scheduler": type(self.pipe.scheduler).__name__,
            "prediction_type": self.pipe.scheduler.config.prediction_type,
        }


def load_model(
    name: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    max_batch_size: int | None = None,
) -> LoadedModel:
    """Load `name` (hub id, local diffusers directory, or "tiny") with a DDIM scheduler.

    device "auto": CUDA when available, else CPU. dtype "auto": float16 on CUDA, float32 on
    CPU. Raises `ModelLoadError` when the weights cannot be found or read.
    """
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH.get(torch_device.type, 4)
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")

    if name == TINY_MODEL_NAME:
        source = ensure_tiny_model(cache_dir or DEFAULT_TINY_DIR)
    else:
        source = _resolve_source(name)
    pipe = _load_pipeline(name, source, torch_dtype)
    pipe = pipe.to(torch_device)
    if torch_device.type == "cuda":
        # SDPA attention is diffusers' default on torch 2; channels_last speeds up convs.
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)

    return LoadedModel(
        name=name,
        pipe=pipe,
        device=torch_device,
        dtype=torch_dtype,
        default_size=int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor),
        max_batch_size=max_batch_size,
    )


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _resolve_source(name: str) -> str:
    """A local directory as a string path, or the hub id unchanged."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    # Hub ids look like "org/name"; anything else with a path separator is a local path.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise ModelLoadError(_load_error_message(name, f"directory {str(path)!r} does not exist"))
    return name


def _load_pipeline(name: str, source: str | Path, dtype: torch.dtype) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    try:
        with warnings.catch_warnings():
            # Newer diffusers renamed `torch_dtype` to `dtype`; the old name works everywhere.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
    except Exception as exc:  # diffusers raises OSError, ValueError, HF hub errors...
        raise ModelLoadError(_load_error_message(name, f"{type(exc).__name__}: {exc}")) from exc
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def _load_error_message(name: str, reason: str) -> str:
    return (
        f"could not load model {name!r} ({reason}). Set {MODEL_ENV_VAR} to a Hugging Face hub "
        "id (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5'), a local diffusers directory, "
        f"or '{TINY_MODEL_NAME}' for the built-in random test model. With HF_HUB_OFFLINE=1 a hub "
        "id must already be in the local Hugging Face cache (HF_HOME)."
    )


# --- the tiny model ---------------------------------------------------------------------


def ensure_tiny_model(path: Path) -> Path:
    """Build the tiny model at `path` unless a complete one is already there."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    return build_tiny_model(path)


def build_tiny_model(path: Path) -> Path:
    """Build a Stable-Diffusion-shaped pipeline with seeded random weights at `path`.

    Fully offline: configs only, tokenizer vocabulary generated here. Written to a temporary
    sibling directory and renamed into place, so concurrent workers never see half a model;
    if another process wins the race its copy is kept (the builds are identical).
    """
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        tokenizer = _build_tiny_tokenizer(tmp / "_tokenizer_src")
        with torch.random.fork_rng(devices=[]):
            pipe = StableDiffusionPipeline(
                vae=_seeded(_build_tiny_vae),
                text_encoder=_seeded(lambda: _build_tiny_text_encoder(tokenizer)),
                tokenizer=tokenizer,
                unet=_seeded(_build_tiny_unet),
                scheduler=_build_ddim_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        shutil.rmtree(tmp / "_tokenizer_src")
        pipe.save_pretrained(tmp, safe_serialization=True)
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "model_index.json").is_file():
                raise  # not a lost race: a real error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _seeded(build):
    torch.manual_seed(TINY_SEED)
    return build()


def _build_ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULER_CONFIG)


def _build_tiny_unet():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,  # latent side: 64 px / 8
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # A random UNet's noise estimate swings wildly with its input, which breaks DDIM's
    # assumption that eps varies slowly along the trajectory (round trips then miss by ~30x
    # the latent). Shrinking the output layer makes eps small and smooth, like a trained one.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.01)
        unet.conv_out.bias.mul_(0.01)
    return unet


def _build_tiny_vae():
    from diffusers import AutoencoderKL

    # Four blocks -> three 2x downsamplings -> vae_scale_factor 8, as in SD.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _build_tiny_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


_TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "tree", "red", "blue", "an")


def _build_tiny_tokenizer(directory: Path):
    """A byte-level BPE CLIPTokenizer from a small generated vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab_and_merges()
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_text, "utf-8")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=77)


def _tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout: 256 byte symbols, their "</w>" forms, merge results, special tokens."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _TINY_WORDS:
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


def _bytes_to_unicode() -> dict[int, str]:
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
