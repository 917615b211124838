"""DDIM inversion (image -> noise latent) and DDIM generation (latent -> image).

method.md section 1 (inversion) and section 3 (generation). Both directions use one update,

    x_to = sqrt(a_to) * (x - sqrt(1 - a_from) * eps) / sqrt(a_from) + sqrt(1 - a_to) * eps,

with `a` the scheduler's cumulative alpha, and one noise estimate with classifier-free
guidance, `eps = eps_u + g (eps_c - eps_u)`, evaluated as a single doubled UNet batch.

Timestep convention (the DDIM inversion off-by-one, diffusers #3436 / #5145 / #10695):
`DDIMScheduler.set_timesteps(N)` gives N descending UNet timesteps t_1 > ... > t_N (SD 1.5,
50 steps: 981, 961, ..., 1). Sampling step i evaluates eps(x, t_i) and moves from a(t_i) to
a(t_{i+1}); the last step lands on `final_alpha_cumprod` (a(0) for SD, since
set_alpha_to_one=False), the level treated as the clean latent x0. Inversion runs exactly
these N steps backwards: it starts from x0 at `final_alpha_cumprod` ("t = -1"), and the step
that undoes sampling step i evaluates eps at the same timestep t_i (on the less noisy latent,
the usual DDIM-inversion approximation, as in Null-text inversion and DDIMInverseScheduler
after #5145) and moves from a(t_{i+1}) up to a(t_i). Inversion therefore ends at t_1, the
timestep generation starts from, and with a noise estimate that does not depend on x the round
trip is exact. The neighbours come from the timestep list itself, which equals
`DDIMScheduler.step`'s `t - num_train_timesteps // N` for the "leading" spacing SD uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentmix.worker.engine.models import LoadedModel

ProgressFn = Callable[[int, int], None]
"""Called with (done, total) UNet steps after each step; raising from it stops the run."""

MAX_GUIDANCE_SCALE = 30.0
SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")


# --- settings and results -----------------------------------------------------------------


@dataclass(frozen=True)
class InversionSettings:
    steps: int = 50
    guidance_scale: float = 7.5
    size: int | None = None  # image side in pixels; None = the model's default

    def resolved(self, model: LoadedModel) -> InversionSettings:
        """These settings with `size` filled in from the model, validated."""
        size = model.default_size if self.size is None else self.size
        resolved = InversionSettings(self.steps, float(self.guidance_scale), size)
        _check_steps(model, resolved.steps)
        _check_guidance(resolved.guidance_scale)
        _check_size(model, size)
        return resolved

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InversionResult:
    latents: torch.Tensor  # float32, CPU, [B, 4, size/8, size/8]
    settings: dict[str, Any]  # steps, guidance_scale, size, model, scheduler, start_timestep


@dataclass(frozen=True)
class PromptEmbeddings:
    """Text embeddings per batch row, plus the empty prompt's for guidance."""

    cond: torch.Tensor  # [B, L, D], one row per latent
    uncond: torch.Tensor  # [1, L, D], embedding of ""

    def __len__(self) -> int:
        return self.cond.shape[0]

    def rows(self, start: int, stop: int) -> PromptEmbeddings:
        return PromptEmbeddings(self.cond[start:stop], self.uncond)


@dataclass(frozen=True)
class DdimSchedule:
    """The N sampling timesteps (descending) and their cumulative alphas."""

    timesteps: tuple[int, ...]
    alphas: tuple[float, ...]  # alphas_cumprod[t] for each timestep
    final_alpha: float  # the clean end, "t = -1"

    def sampling_steps(self) -> Iterator[tuple[int, float, float]]:
        """(unet timestep, a_from, a_to) for each denoising step, t descending."""
        targets = (*self.alphas[1:], self.final_alpha)
        yield from zip(self.timesteps, self.alphas, targets, strict=True)

    def inversion_steps(self) -> Iterator[tuple[int, float, float]]:
        """The sampling steps reversed: same timesteps, a_from and a_to swapped."""
        for t, a_from, a_to in reversed(list(self.sampling_steps())):
            yield t, a_to, a_from


def ddim_schedule(model: LoadedModel, steps: int) -> DdimSchedule:
    """The DDIM timesteps the sampler uses for `steps` steps (a fresh scheduler per call)."""
    _check_steps(model, steps)
    _check_prediction_type(model)
    scheduler = _fresh_scheduler(model)
    scheduler.set_timesteps(steps)
    timesteps = tuple(int(t) for t in scheduler.timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    return DdimSchedule(
        timesteps=timesteps,
        alphas=tuple(float(alphas_cumprod[t]) for t in timesteps),
        final_alpha=float(scheduler.final_alpha_cumprod),
    )


def _fresh_scheduler(model: LoadedModel):
    """A private copy, so set_timesteps never mutates the shared pipeline's scheduler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(model.pipe.scheduler.config)


# --- validation ---------------------------------------------------------------------------


def _check_steps(model: LoadedModel, steps: int) -> None:
    config = model.pipe.scheduler.config
    train_steps = int(config.num_train_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be an integer in [1, {train_steps}], got {steps!r}")
    # "leading" spacing with steps_offset=1 puts the largest timestep at
    # (N-1) * (T // N) + 1, which is out of range for N = T (e.g. 1000 steps).
    if config.timestep_spacing == "leading":
        largest = (steps - 1) * (train_steps // steps) + int(config.steps_offset)
        if largest >= train_steps:
            raise ValueError(
                f"steps={steps} puts a timestep at {largest}, beyond the scheduler's "
                f"{train_steps} training steps; use at most {train_steps - 1} steps"
            )


def _check_prediction_type(model: LoadedModel) -> None:
    prediction_type = model.pipe.scheduler.config.prediction_type
    if prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise ValueError(
            f"model {model.name!r} predicts {prediction_type!r}; supported prediction types are "
            f"{SUPPORTED_PREDICTION_TYPES}"
        )


def _check_guidance(guidance_scale: float) -> None:
    if not (math.isfinite(guidance_scale) and 0.0 <= guidance_scale <= MAX_GUIDANCE_SCALE):
        raise ValueError(
            f"guidance_scale must be in [0, {MAX_GUIDANCE_SCALE}], got {guidance_scale!r}"
        )


def _check_size(model: LoadedModel, size: int) -> None:
    factor = model.vae_scale_factor
    if isinstance(size, bool) or not isinstance(size, int) or size < factor or size % factor:
        raise ValueError(f"size must be a positive multiple of {factor} pixels, got {size!r}")


def _check_latents(model: LoadedModel, latents: torch.Tensor) -> None:
    channels = model.latent_channels
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents)
        raise ValueError(f"latents must be a [B, {channels}, h, w] tensor, got {shape}")
    if latents.shape[0] == 0 or latents.shape[1] != channels:
        raise ValueError(
            f"latents must have shape [B>=1, {channels}, h, w] for model {model.name!r}, "
            f"got {tuple(latents.shape)}"
        )
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise ValueError("latents must be finite floating-point numbers")


def _prompts_per_row(prompts: str | Sequence[str], batch_size: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * batch_size
    prompts = list(prompts)
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch_size}; pass one each")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be strings")
    return prompts


# --- images and text ----------------------------------------------------------------------


def prepare_images(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Resize the shorter side to `size`, center-crop to size x size, RGB in [-1, 1].

    Returns float32 [B, 3, size, size].
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8 pixels, got {size!r}")
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("images must be a non-empty list of PIL images")
    arrays = [np.asarray(_resize_center_crop(im.convert("RGB"), size)) for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


@torch.inference_mode()
def encode_images(model: LoadedModel, images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """VAE latents x0 = latent_dist.mean * scaling_factor (method.md section 1), float32 CPU.

    Encoded `model.vae_batch_size` images at a time, which bounds the VAE's memory."""
    _check_size(model, size)
    pixels = prepare_images(images, size)
    vae = model.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = []
    for start in range(0, len(pixels), model.vae_batch_size):
        batch = pixels[start : start + model.vae_batch_size].to(model.device, model.dtype)
        mean = vae.encode(batch).latent_dist.mean.float()
        latents.append(((mean - shift) * vae.config.scaling_factor).cpu())
    return torch.cat(latents)


@torch.inference_mode()
def decode_latents(model: LoadedModel, x0: torch.Tensor) -> list[Image.Image]:
    """VAE-decode clean latents x0 to RGB PIL images, `model.vae_batch_size` at a time."""
    _check_latents(model, x0)
    vae = model.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images: list[Image.Image] = []
    for start in range(0, len(x0), model.vae_batch_size):
        batch = x0[start : start + model.vae_batch_size].to(model.device, torch.float32)
        batch = (batch / vae.config.scaling_factor + shift).to(model.dtype)
        pixels = vae.decode(batch).sample.float()
        pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        images.extend(Image.fromarray(a) for a in arrays)
    return images


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: Sequence[str]) -> PromptEmbeddings:
    """CLIP text embeddings per row, plus the empty prompt's for guidance.

    Each distinct prompt is looked up in the model's prompt cache; the ones missing are
    encoded together in batches of `max_batch_size`, then cached. A worker therefore runs
    the text encoder once per prompt, not once per job or per row.
    """
    prompts = [prompts] if isinstance(prompts, str) else _prompts_per_row(prompts, len(prompts))
    if not prompts:
        raise ValueError("prompts must not be empty")
    cache = model.prompt_cache
    table = {p: cache.get(p) for p in dict.fromkeys([*prompts, ""])}
    missing = [p for p, embedding in table.items() if embedding is None]
    for start in range(0, len(missing), model.max_batch_size):
        texts = missing[start : start + model.max_batch_size]
        for text, embedding in zip(texts, _encode_texts(model, texts), strict=True):
            table[text] = embedding.unsqueeze(0).clone()
            cache.put(text, table[text])
    return PromptEmbeddings(cond=torch.cat([table[p] for p in prompts]), uncond=table[""])


def _encode_texts(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    embeds, _ = model.pipe.encode_prompt(
        texts, model.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds


# --- the shared DDIM pieces ---------------------------------------------------------------


def predict_noise(
    model: LoadedModel,
    x: torch.Tensor,
    timestep: int,
    embeddings: PromptEmbeddings,
    guidance_scale: float,
) -> torch.Tensor:
    """The UNet's noise estimate at `timestep`, float32, with classifier-free guidance.

    eps = eps_u + g (eps_c - eps_u) (method.md section 1), as one doubled batch; g == 1
    needs only the conditional pass.
    """
    unet = model.pipe.unet
    t = torch.tensor(timestep, device=model.device)
    x_in = x.to(model.dtype)
    cond = embeddings.cond.to(model.device, model.dtype)
    if guidance_scale == 1.0:
        eps = unet(x_in, t, encoder_hidden_states=cond, return_dict=False)[0]
        return _as_noise(model, eps.float(), x, timestep)
    uncond = embeddings.uncond.to(model.device, model.dtype).expand(len(x), -1, -1)
    text = torch.cat([uncond, cond])
    out = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=text, return_dict=False)[0]
    eps_u, eps_c = out.float().chunk(2)
    return _as_noise(model, eps_u + guidance_scale * (eps_c - eps_u), x, timestep)


def _as_noise(model: LoadedModel, output: torch.Tensor, x: torch.Tensor, timestep: int):
    """Convert a v-prediction (SD 2.x 768) to eps at the UNet's timestep; eps passes through."""
    if model.pipe.scheduler.config.prediction_type == "epsilon":
        return output
    a_t = float(model.pipe.scheduler.alphas_cumprod[timestep])
    return math.sqrt(a_t) * output + math.sqrt(1.0 - a_t) * x


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """x_to = sqrt(a_to) (x - sqrt(1 - a_from) eps) / sqrt(a_from) + sqrt(1 - a_to) eps.

    method.md section 1, eta = 0. The same formula serves both directions: a_to < a_from
    (noisier) inverts, a_to > a_from samples.
    """
    predicted_x0 = (x - math.sqrt(1.0 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * predicted_x0 + math.sqrt(1.0 - a_to) * eps


def _run_ddim(
    model: LoadedModel,
    latents: torch.Tensor,
    embeddings: PromptEmbeddings,
    steps: Sequence[tuple[int, float, float]],
    guidance_scale: float,
    progress: ProgressFn | None,
) -> torch.Tensor:
    """Run `steps` over the batch in chunks of max_batch_size; float32 CPU result."""
    chunk = model.max_batch_size
    total = len(steps) * math.ceil(len(latents) / chunk)
    done = 0
    results = []
    for start in range(0, len(latents), chunk):
        x = latents[start : start + chunk].to(model.device, torch.float32)
        rows = embeddings.rows(start, start + chunk)
        for t, a_from, a_to in steps:
            eps = predict_noise(model, x, t, rows, guidance_scale)
            x = ddim_step(x, eps, a_from, a_to)
            done += 1
            if progress is not None:
                progress(done, total)
        results.append(x.cpu())
    return torch.cat(results)


# --- inversion ----------------------------------------------------------------------------


@torch.inference_mode()
def invert(
    model: LoadedModel,
    images: Sequence[Image.Image],
    prompts: str | Sequence[str],
    settings: InversionSettings,
    progress: ProgressFn | None = None,
) -> InversionResult:
    """DDIM-invert images to their noise latents x_T (method.md section 1)."""
    settings = settings.resolved(model)
    if not images:
        raise ValueError("images must be a non-empty list of PIL images")
    prompt_list = _prompts_per_row(prompts, len(images))
    schedule = ddim_schedule(model, settings.steps)

    x0 = encode_images(model, images, settings.size)
    embeddings = encode_prompts(model, prompt_list)
    steps = list(schedule.inversion_steps())
    latents = _run_ddim(model, x0, embeddings, steps, settings.guidance_scale, progress)
    return InversionResult(
        latents=latents,
        settings={
            **settings.as_dict(),
            "model": model.name,
            "scheduler": type(model.pipe.scheduler).__name__,
            "start_timestep": schedule.timesteps[0],
        },
    )


# --- generation ---------------------------------------------------------------------------


@torch.inference_mode()
def sample(
    model: LoadedModel,
    latents: torch.Tensor,
    embeddings: PromptEmbeddings,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """DDIM (eta = 0) from noise latents x_T down to clean latents x0, float32 CPU."""
    _check_latents(model, latents)
    _check_guidance(guidance_scale)
    if len(embeddings) != len(latents):
        raise ValueError(
            f"got prompt embeddings for {len(embeddings)} rows but {len(latents)} latents"
        )
    schedule = ddim_schedule(model, steps)
    steps_list = list(schedule.sampling_steps())
    return _run_ddim(model, latents, embeddings, steps_list, guidance_scale, progress)


def generate(
    model: LoadedModel,
    latents: torch.Tensor,
    prompts: str | Sequence[str] | PromptEmbeddings,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    progress: ProgressFn | None = None,
) -> list[Image.Image]:
    """Denoise latents with DDIM and decode them to images (method.md section 3).

    `prompts` is one prompt for all rows, one per row, or ready-made embeddings (e.g. the
    inputs' text embeddings mixed with the latents' weights).
    """
    _check_latents(model, latents)
    _check_steps(model, steps)
    _check_guidance(guidance_scale)
    if isinstance(prompts, PromptEmbeddings):
        embeddings = prompts
    else:
        embeddings = encode_prompts(model, _prompts_per_row(prompts, len(latents)))
    x0 = sample(
        model,
        latents,
        embeddings,
        steps=steps,
        guidance_scale=guidance_scale,
        progress=progress,
    )
    return decode_latents(model, x0)
