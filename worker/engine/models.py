"""Loading diffusion pipelines: hub ids, local diffusers directories, the trained `shapes`
model and the offline test models (`testing/random_models.py`).

`load_model` is called once per worker process (load once, run many). It returns a
`LoadedModel`: the diffusers pipeline with its family's sampler (a `DDIMScheduler` for Stable
Diffusion), the `ModelFamily` that drives it, plus the device, dtype, batch sizes and the
text-embedding cache the engine needs.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentmix.service.core.augmentation_defaults import AugmentationDefaults
from latentmix.service.core.model_card import ModelCard
from latentmix.worker.engine.families import ModelFamily, family_for_source, family_of
from latentmix.worker.engine.inversion import methods_for
from latentmix.worker.engine.shapes.model import (
    SHAPES_AUGMENTATION,
    SHAPES_MODEL_NAME,
    shapes_pipeline_dir,
)

# The registry of the offline test models (tiny, tiny-v, tiny-sdxl, tiny-sd3, sd15-random:
# seeded random weights, no download): the one way production code reaches the test-model
# builders (tests/test_layers.py keeps it so).
from latentmix.worker.engine.testing import random_models as test_models

DEFAULT_MODELS_DIR = Path("data/models")  # built-in models; relative to the working directory
MODEL_ENV_VAR = "LATENTMIX_MODEL"

DEFAULT_PROMPT_CACHE_SIZE = 1024  # prompts; an SD 1.5 embedding is 77 x 768 values

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


Embedding = torch.Tensor | tuple[torch.Tensor, ...]  # what a family caches per prompt


class PromptCache:
    """Text embeddings by prompt, one cache per loaded model; least recently used go first.

    A worker serves many jobs with the same few prompts ("a photo of a {class}"), so each
    prompt's CLIP pass runs once per process, not once per job. Entries are [1, L, D] tensors
    on the model's device in its dtype (SD 3: a pair, the sequence and the pooled [1, P]).
    `capacity` 0 turns caching off.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"prompt cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Embedding] = OrderedDict()

    def get(self, prompt: str) -> Embedding | None:
        embedding = self._entries.get(prompt)
        if embedding is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(prompt)
        return embedding

    def put(self, prompt: str, embedding: Embedding) -> None:
        if self.capacity == 0:
            return
        self._entries[prompt] = embedding
        self._entries.move_to_end(prompt)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._entries


@dataclass
class LoadedModel:
    """A diffusion pipeline ready for inversion and generation."""

    name: str  # what the user asked for: hub id, local path or "tiny"
    pipe: Any  # e.g. diffusers.StableDiffusionPipeline with a DDIMScheduler
    family: ModelFamily  # what drives `pipe`: encoders, denoiser, prediction type
    device: torch.device
    dtype: torch.dtype
    default_size: int  # image side in pixels the model was trained at
    max_batch_size: int  # images per UNet call (twice as many rows with guidance)
    vae_batch_size: int  # images per VAE encode/decode call
    # Images per UNet call when inverting: a job's images are all known at once and nobody
    # waits for the first of them, so they go through in the largest batch that pays.
    inversion_batch_size: int
    compiled: bool = False  # UNet wrapped by torch.compile
    # Measured settings under which the model's mixes stay on-class; None: its family's
    # paper defaults (the card's `augmentation`).
    augmentation: AugmentationDefaults | None = None
    prompt_cache: PromptCache = field(
        default_factory=lambda: PromptCache(DEFAULT_PROMPT_CACHE_SIZE), repr=False
    )

    @functools.cached_property
    def card(self) -> ModelCard:
        """The family's description of the model, with the inversion methods whose needs
        it meets (families know their pipelines, not the methods). Built once: a loaded
        model does not change, and the card (frozen) is read at every step of every job."""
        card = self.family.card(self)
        augmentation = self.augmentation or AugmentationDefaults.paper(card.default_guidance)
        return card.model_copy(
            update={"inversion_methods": methods_for(card), "augmentation": augmentation}
        )

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for Stable Diffusion)."""
        return self.card.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Pixels an image side must be a multiple of (SD: 8; SD 3: 8 x patch size 2)."""
        return self.card.size_multiple

    @property
    def latent_channels(self) -> int:
        return self.card.latent_channels

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for health endpoints and logs."""
        return self.card.model_dump(mode="json")


def load_model(
    name: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    max_batch_size: int | None = None,
    vae_batch_size: int | None = None,
    inversion_batch_size: int | None = None,
    compile: bool = False,
    prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
    t5: bool = True,
) -> LoadedModel:
    """Load `name` (hub id, local diffusers directory, a built-in random model: "tiny",
    "tiny-v", "tiny-sdxl", "tiny-sd3", "sd15-random", or "shapes", the small trained model
    shipped in the package, 64 px).

    device "auto": CUDA when available, else CPU. dtype "auto": float16 on CUDA, float32 on
    CPU (the engine keeps its latent arithmetic in float32 either way). Batch sizes default
    per device (`default_batch_sizes`). `compile` wraps the UNet with `torch.compile` (meant
    for CUDA; the first call of each batch shape pays the compilation). Raises
    `ModelLoadError` when the weights cannot be found or read. `cache_dir` is the folder of
    built-in models: "tiny" is built once into `cache_dir / "tiny"` (default `data/models`),
    "tiny-v", "tiny-sdxl" and "tiny-sd3" likewise. On CUDA in float16, a repository's
    half-precision weight files are loaded when it has them (`weights_variant`). `t5` False
    loads an SD 3 pipeline without its T5 text encoder (most of its memory; the embedding's
    T5 part is then zeros), and the card says which (`t5`); "tiny-sd3" has none. Families
    without T5 ignore it.
    """
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    default_unet_batch, default_vae_batch, default_inversion_batch = default_batch_sizes(
        torch_device
    )
    max_batch_size = default_unet_batch if max_batch_size is None else max_batch_size
    vae_batch_size = default_vae_batch if vae_batch_size is None else vae_batch_size
    if inversion_batch_size is None:
        inversion_batch_size = max(default_inversion_batch, max_batch_size)
    for label, value in (
        ("max_batch_size", max_batch_size),
        ("vae_batch_size", vae_batch_size),
        ("inversion_batch_size", inversion_batch_size),
    ):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    prompt_cache = PromptCache(prompt_cache_size)

    if name in test_models.ON_DISK_MODELS:
        model_dir = test_models.ensure_random_model(name, (cache_dir or DEFAULT_MODELS_DIR) / name)
        pipe = _load_pipeline(name, model_dir, torch_dtype, t5)
    elif name == SHAPES_MODEL_NAME:
        pipe = _load_pipeline(name, _shapes_source(), torch_dtype, t5)
    elif name in test_models.RANDOM_MODELS:
        pipe = test_models.build_random_pipeline(test_models.RANDOM_MODELS[name])  # float32
        if torch_dtype != torch.float32:
            pipe = pipe.to(dtype=torch_dtype)
    else:
        source = _resolve_source(name)
        variant = weights_variant(source, torch_device, torch_dtype)
        pipe = _load_pipeline(name, source, torch_dtype, t5, variant)
    pipe = pipe.to(torch_device)
    _optimize_for_device(pipe, torch_device, compile=compile)
    pipe.set_progress_bar_config(disable=True)
    family = family_of(pipe)

    return LoadedModel(
        name=name,
        pipe=pipe,
        family=family,
        device=torch_device,
        dtype=torch_dtype,
        default_size=family.native_size(pipe),
        max_batch_size=max_batch_size,
        vae_batch_size=vae_batch_size,
        inversion_batch_size=inversion_batch_size,
        compiled=compile,
        augmentation=SHAPES_AUGMENTATION if name == SHAPES_MODEL_NAME else None,
        prompt_cache=prompt_cache,
    )


def default_batch_sizes(device: torch.device) -> tuple[int, int, int]:
    """(images per UNet call when generating, images per VAE call, images per UNet call when
    inverting) for `device`.

    CPU: 4, 4 and 16. Generating, larger batches barely raise a CPU's throughput and only
    delay the first images; inverting, nobody waits for the first latent, and one call over
    16 images measured 17% faster than four calls of 4 (tiny, 10 steps). CUDA: by memory, for
    SD 1.5 at 512 px in fp16 with guidance (the UNet sees twice the batch): 16 and 8 from
    40 GiB, 8 and 4 from 16 GiB, else 4 and 2; inversion the same as generation there, since
    memory, not latency, is the bound. Override with LATENTMIX_MAX_BATCH_SIZE,
    LATENTMIX_VAE_BATCH_SIZE and LATENTMIX_INVERSION_BATCH_SIZE.
    """
    if device.type != "cuda":
        return 4, 4, 16
    memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    if memory_gib >= 40:
        return 16, 8, 16
    if memory_gib >= 16:
        return 8, 4, 8
    return 4, 2, 4


def _optimize_for_device(pipe: Any, device: torch.device, *, compile: bool) -> None:
    """Speed settings from the Diffusers "Accelerate inference" and "Reduce memory" guides.

    Attention: diffusers' default processor on torch 2 is already scaled-dot-product
    attention (AttnProcessor2_0); it is left in place and reported by `describe()`.
    CUDA: channels-last UNet convolutions, cuDNN autotuning, and VAE tiling, which bounds
    memory only for images larger than the VAE's native size (smaller ones are not tiled).
    The engine's own VAE batching (`vae_batch_size`) plays the part of VAE slicing.
    On CPU channels-last measured slower (mkldnn), so the layout is left alone.
    """
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer  # SD 3: a transformer
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if hasattr(pipe, "unet"):
            pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.enable_tiling()
    if compile:
        # In place (nn.Module.compile): the pipeline keeps its denoiser object and config.
        denoiser.compile(fullgraph=True)


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


def _shapes_source() -> Path:
    try:
        return shapes_pipeline_dir()
    except FileNotFoundError as exc:
        raise ModelLoadError(str(exc)) from exc


def _load_pipeline(
    name: str,
    source: str | Path,
    dtype: torch.dtype,
    t5: bool = True,
    variant: str | None = None,
) -> Any:
    """The pipeline at `source`, loaded by the family its model_index.json names."""
    try:
        family = family_for_source(source)
        pipe = family.load_pipeline(str(source), dtype, t5=t5, variant=variant)
    except Exception as exc:  # diffusers raises OSError, ValueError, HF hub errors...
        raise ModelLoadError(_load_error_message(name, f"{type(exc).__name__}: {exc}")) from exc
    return pipe


# --- half-precision weight files -----------------------------------------------------------

FP16_VARIANT = "fp16"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_variant(
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    list_files: Callable[[str], list[str]] | None = None,
) -> str | None:
    """The weight variant to load: "fp16" when a float16 model on CUDA can load the
    half-precision files the repository has (`unet/diffusion_pytorch_model.fp16.safetensors`:
    SD 1.5 is then a ~2 GB download, not ~4 GB); None (the default files) on CPU, in another
    dtype, or when the repository has no such files. `list_files` lists a source's files
    (default `repository_files`); it is only asked on CUDA in float16."""
    if device.type != "cuda" or dtype != torch.float16:
        return None
    files = (list_files or repository_files)(source)
    has_variant = any(
        f.endswith(_WEIGHT_SUFFIXES) and f".{FP16_VARIANT}." in Path(f).name for f in files
    )
    return FP16_VARIANT if has_variant else None


def repository_files(source: str) -> list[str]:
    """The file paths of a local diffusers directory or a hub repository: listed on the hub,
    else (offline) from its snapshot in the local Hugging Face cache; [] when neither says."""
    path = Path(source)
    if path.is_dir():
        return [str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()]
    import huggingface_hub

    with contextlib.suppress(Exception):  # offline, gated, rate-limited: the cache may know
        return huggingface_hub.list_repo_files(source)
    try:
        snapshot = Path(huggingface_hub.snapshot_download(source, local_files_only=True))
    except Exception:
        return []
    return [str(f.relative_to(snapshot)) for f in snapshot.rglob("*") if f.is_file()]


def _load_error_message(name: str, reason: str) -> str:
    return (
        f"could not load model {name!r} ({reason}). Set {MODEL_ENV_VAR} to a Hugging Face hub "
        "id (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5'), a local diffusers directory, "
        f"or '{test_models.TINY_MODEL_NAME}' for the built-in random test model. With "
        "HF_HUB_OFFLINE=1 a hub id must already be in the local Hugging Face cache (HF_HOME)."
    )
