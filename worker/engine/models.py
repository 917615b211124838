"""Loading Stable Diffusion pipelines, and the built-in tiny test model.

`load_model` is called once per worker process (load once, run many). It returns a
`LoadedModel`: the diffusers `StableDiffusionPipeline` with a `DDIMScheduler`, plus the
device, dtype, batch sizes and the text-embedding cache the engine needs.

Two built-in models have random weights and need no download:

- `"tiny"`: Stable-Diffusion-shaped and small, built offline from configs and cached on disk;
  tests and CPU demos use it.
- `"sd15-random"`: exactly Stable Diffusion 1.5's architecture (UNet, VAE, CLIP ViT-L/14 text
  encoder) with seeded random weights, built in memory. It costs the same compute as the real
  model, so benchmarks use it where the weights cannot be downloaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

TINY_MODEL_NAME = "tiny"
SD15_RANDOM_MODEL_NAME = "sd15-random"
DEFAULT_MODELS_DIR = Path("data/models")  # built-in models; relative to the working directory
TINY_SEED = 0
MODEL_ENV_VAR = "LATENTMIX_MODEL"

DEFAULT_PROMPT_CACHE_SIZE = 1024  # prompts; an SD 1.5 embedding is 77 x 768 values

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


class PromptCache:
    """Text embeddings by prompt, one cache per loaded model; least recently used go first.

    A worker serves many jobs with the same few prompts ("a photo of a {class}"), so each
    prompt's CLIP pass runs once per process, not once per job. Entries are [1, L, D] tensors
    on the model's device in its dtype. `capacity` 0 turns caching off.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"prompt cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, prompt: str) -> torch.Tensor | None:
        embedding = self._entries.get(prompt)
        if embedding is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(prompt)
        return embedding

    def put(self, prompt: str, embedding: torch.Tensor) -> None:
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
    """A Stable Diffusion pipeline ready for inversion and generation."""

    name: str  # what the user asked for: hub id, local path or "tiny"
    pipe: Any  # diffusers.StableDiffusionPipeline with a DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    default_size: int  # image side in pixels the model was trained at
    max_batch_size: int  # images per UNet call (twice as many rows with guidance)
    vae_batch_size: int  # images per VAE encode/decode call
    compiled: bool = False  # UNet wrapped by torch.compile
    prompt_cache: PromptCache = field(
        default_factory=lambda: PromptCache(DEFAULT_PROMPT_CACHE_SIZE), repr=False
    )

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
            "vae_batch_size": self.vae_batch_size,
            "compiled": self.compiled,
            "attention": type(_first_attention_processor(self.pipe.unet)).__name__,
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
    vae_batch_size: int | None = None,
    compile: bool = False,
    prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
) -> LoadedModel:
    """Load `name` (hub id, local diffusers directory, "tiny" or "sd15-random") with DDIM.

    device "auto": CUDA when available, else CPU. dtype "auto": float16 on CUDA, float32 on
    CPU (the engine keeps its latent arithmetic in float32 either way). Batch sizes default
    per device (`default_batch_sizes`). `compile` wraps the UNet with `torch.compile` (meant
    for CUDA; the first call of each batch shape pays the compilation). Raises
    `ModelLoadError` when the weights cannot be found or read. `cache_dir` is the folder of
    built-in models: "tiny" is built once into `cache_dir / "tiny"` (default `data/models`).
    """
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    default_unet_batch, default_vae_batch = default_batch_sizes(torch_device)
    max_batch_size = default_unet_batch if max_batch_size is None else max_batch_size
    vae_batch_size = default_vae_batch if vae_batch_size is None else vae_batch_size
    for label, value in (("max_batch_size", max_batch_size), ("vae_batch_size", vae_batch_size)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    prompt_cache = PromptCache(prompt_cache_size)

    if name == TINY_MODEL_NAME:
        pipe = _load_pipeline(
            name,
            ensure_tiny_model((cache_dir or DEFAULT_MODELS_DIR) / TINY_MODEL_NAME),
            torch_dtype,
        )
    elif name == SD15_RANDOM_MODEL_NAME:
        pipe = build_sd15_random_pipeline()  # float32
        if torch_dtype != torch.float32:
            pipe = pipe.to(dtype=torch_dtype)
    else:
        pipe = _load_pipeline(name, _resolve_source(name), torch_dtype)
    pipe = pipe.to(torch_device)
    _optimize_for_device(pipe, torch_device, compile=compile)
    pipe.set_progress_bar_config(disable=True)

    return LoadedModel(
        name=name,
        pipe=pipe,
        device=torch_device,
        dtype=torch_dtype,
        default_size=int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor),
        max_batch_size=max_batch_size,
        vae_batch_size=vae_batch_size,
        compiled=compile,
        prompt_cache=prompt_cache,
    )


def default_batch_sizes(device: torch.device) -> tuple[int, int]:
    """(images per UNet call, images per VAE call) for `device`.

    CPU: 4 and 4; larger batches barely raise a CPU's throughput. CUDA: by memory, for SD 1.5
    at 512 px in fp16 with guidance (the UNet sees twice the batch): 16 and 8 from 40 GiB,
    8 and 4 from 16 GiB, else 4 and 2. Override with LATENTMIX_MAX_BATCH_SIZE and
    LATENTMIX_VAE_BATCH_SIZE.
    """
    if device.type != "cuda":
        return 4, 4
    memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    if memory_gib >= 40:
        return 16, 8
    if memory_gib >= 16:
        return 8, 4
    return 4, 2


def _optimize_for_device(pipe: Any, device: torch.device, *, compile: bool) -> None:
    """Speed settings from the Diffusers "Accelerate inference" and "Reduce memory" guides.

    Attention: diffusers' default processor on torch 2 is already scaled-dot-product
    attention (AttnProcessor2_0); it is left in place and reported by `describe()`.
    CUDA: channels-last UNet convolutions, cuDNN autotuning, and VAE tiling, which bounds
    memory only for images larger than the VAE's native size (smaller ones are not tiled).
    The engine's own VAE batching (`vae_batch_size`) plays the part of VAE slicing.
    On CPU channels-last measured slower (mkldnn), so the layout is left alone.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.enable_tiling()
    if compile:
        # In place (nn.Module.compile): the pipeline keeps its UNet object and config.
        pipe.unet.compile(fullgraph=True)


def _first_attention_processor(unet: Any) -> Any:
    processors = getattr(unet, "attn_processors", {})
    return next(iter(processors.values()), None)


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
    _calm_noise_estimate(unet)
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


# --- the SD-1.5-sized random model ------------------------------------------------------

# Stable Diffusion 1.5's component configs (stable-diffusion-v1-5: unet/, vae/ config.json;
# text_encoder/ is CLIP ViT-L/14's text tower). Defaults the configs leave out are diffusers'.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def build_sd15_random_pipeline() -> Any:
    """Stable Diffusion 1.5's architecture with seeded random weights, in memory (float32).

    About 1.07 billion parameters (UNet 860M, VAE 84M, text encoder 123M): the same compute
    per step as the real model. Nothing is written to disk; building takes tens of seconds on
    a CPU. The tokenizer is the tiny model's byte-level one (its ids fit CLIP's vocabulary);
    the outputs are noise, so only the shapes and the cost are meaningful.
    """
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="sd15-random-tokenizer-") as tmp:
        tokenizer = _build_tiny_tokenizer(Path(tmp) / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        return StableDiffusionPipeline(
            vae=_seeded(_build_sd15_vae),
            text_encoder=_seeded(lambda: _build_sd15_text_encoder(tokenizer)),
            tokenizer=tokenizer,
            unet=_seeded(_build_sd15_unet),
            scheduler=_build_ddim_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def _build_sd15_unet():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    _calm_noise_estimate(unet)
    return unet


def _build_sd15_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**SD15_VAE_CONFIG)


def _build_sd15_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **SD15_TEXT_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def _calm_noise_estimate(unet) -> None:
    """Shrink a random UNet's output layer so its noise estimate is small and smooth.

    A random UNet's eps swings wildly with its input, which breaks DDIM's assumption that eps
    varies slowly along the trajectory (round trips then miss by ~30x the latent). Scaled
    down, eps behaves like a trained model's.
    """
    if unet.conv_out.weight.is_meta:
        return
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.01)
        unet.conv_out.bias.mul_(0.01)


# --- the tiny model's tokenizer, shared by both random models --------------------------

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
