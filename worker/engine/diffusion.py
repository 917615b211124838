"""The engine's operations: invert images into noise latents, and generate images from
latents (method.md sections 1 and 3).

Each call goes through the model's family (`families/`: encoders, denoiser) and an
inversion method (`inversion/`: the schedule and the loops). `ddim.py` holds the DDIM update
and the timestep convention inversion and generation share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from PIL import Image

from latentmix.service.core.contract import InversionSettings
from latentmix.service.core.model_card import ModelCard
from latentmix.worker.engine import reconstruction
from latentmix.worker.engine.checks import (
    check_guidance,
    check_latents,
    check_size,
    prompts_per_row,
)
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion import InversionMethod, default_inversion, get_inversion
from latentmix.worker.engine.models import LoadedModel
from latentmix.worker.engine.results import Inverted, ProgressFn


def named_method(settings: InversionSettings, card: ModelCard) -> InversionMethod:
    """The method `settings` name, or the model's default (its card's first) when they name
    none; ValueError naming the allowed ones unless the model has it."""
    return get_inversion(settings.method or default_inversion(card).name, card)


def resolved(settings: InversionSettings, model: LoadedModel) -> InversionSettings:
    """`settings` as `model` runs them: its default method when none is named, the method's
    option defaults filled in and checked (service/core/inversion_methods.py), the size
    filled in from the model; ValueError naming the allowed values otherwise."""
    method = named_method(settings, model.card)
    method.check(model, settings.steps)
    settings = settings.for_method(model.card.inversion_methods, method.name)
    size = model.default_size if settings.size is None else settings.size
    check_guidance(settings.guidance_scale)
    check_size(model, size)
    return settings.model_copy(update={"method": method.name, "size": size})


# --- images and text, through the model's family ------------------------------------------


def encode_images(model: LoadedModel, images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Clean latents x0 of `images` at `size` pixels, float32 CPU (method.md section 1)."""
    return model.family.encode_images(model, images, size)


def decode_latents(model: LoadedModel, x0: torch.Tensor) -> list[Image.Image]:
    """RGB PIL images of clean latents x0."""
    return model.family.decode_latents(model, x0)


def encode_prompts(model: LoadedModel, prompts: str | Sequence[str]) -> Conditioning:
    """Text conditioning, one row per prompt, plus the empty prompt's for guidance."""
    return model.family.encode_prompts(model, prompts)


# --- inversion ----------------------------------------------------------------------------


@torch.inference_mode()
def invert(
    model: LoadedModel,
    images: Sequence[Image.Image],
    prompts: str | Sequence[str],
    settings: InversionSettings,
    progress: ProgressFn | None = None,
    *,
    measure: bool | int = False,
) -> Inverted:
    """Invert images to the noise latents generation starts from (method.md section 1).
    With `measure` (True: every row; a number n: the first n rows), sample those
    latents back with the same method, steps and guidance and record the round trip's
    error, NaN for the rows not measured (one generation pass more over the measured rows:
    `progress` counts it after the inversion's steps as their share of the rows)."""
    settings = resolved(settings, model)
    if not images:
        raise ValueError("images must be a non-empty list of PIL images")
    prompt_list = prompts_per_row(prompts, len(images))
    method = get_inversion(settings.method, model.card)
    measured = min(len(images), len(images) if measure is True else int(measure))

    halves = _Passes(progress, len(images), measured) if measured and progress else None
    x0 = encode_images(model, images, settings.size)
    conditioning = encode_prompts(model, prompt_list)
    inverted = method.invert(
        model,
        x0,
        conditioning,
        settings.steps,
        settings.guidance_scale,
        halves.first if halves else progress,
        settings.options(),
    )
    record = {
        **settings.id_fields(),
        "model": model.name,
        "scheduler": type(model.pipe.scheduler).__name__,
        **inverted.settings,
    }
    inverted = replace(inverted, settings=record)
    if measured:
        errors = _round_trip_errors(
            model,
            inverted.rows(0, measured),
            x0[:measured],
            conditioning.rows(0, measured),
            halves.second if halves else None,
        )
        inverted = replace(inverted, reconstruction=_spread(errors, len(images)))
    return inverted


@torch.no_grad()
def round_trip(
    model: LoadedModel,
    inverted: Inverted,
    images: Sequence[Image.Image],
    prompts: str | Sequence[str],
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """The round trip's errors of latents inverted earlier (their method, steps, guidance
    and size from `inverted.settings`) against the images and prompts they came from: what
    `invert(measure=...)` records, measured later (worker/tasks/measure.py)."""
    x0 = encode_images(model, images, inverted.settings["size"])
    conditioning = encode_prompts(model, prompts_per_row(prompts, len(images)))
    return _round_trip_errors(model, inverted, x0, conditioning, progress)


def _spread(errors: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Errors of the first rows measured, padded with NaN to `count` rows."""
    return {
        name: torch.cat([values, values.new_full((count - len(values),), math.nan)])
        for name, values in errors.items()
    }


class _Passes:
    """One progress over two passes of unknown lengths: the inversion's steps, then the
    measuring pass over `measured` of the `rows` rows, counted as that share of as many
    steps (all rows: the second half; monotonic; cancelation still stops either pass at its
    next step)."""

    def __init__(self, progress: ProgressFn, rows: int, measured: int):
        self.progress, self.share = progress, measured / rows
        self.steps = self.total = 1

    def first(self, done: int, steps: int) -> None:
        self.steps, self.total = steps, steps + math.ceil(steps * self.share)
        self.progress(done, self.total)

    def second(self, done: int, steps: int) -> None:
        self.progress(self.steps + done * (self.total - self.steps) // steps, self.total)


def _round_trip_errors(
    model: LoadedModel,
    inverted: Inverted,
    x0: torch.Tensor,
    conditioning: Conditioning,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """The reconstruction errors of `inverted` against the clean latents x0 it came from."""
    steps, guidance = inverted.settings["steps"], inverted.settings["guidance_scale"]
    regenerated = _method_of(model, inverted).sample(
        model, inverted, conditioning, steps, guidance, progress
    )
    psnr, largest = reconstruction.pixel_errors(
        decode_latents(model, regenerated), decode_latents(model, x0)
    )
    return {
        "latent_rmse": reconstruction.latent_rmse(regenerated, x0),
        "pixel_psnr_db": psnr,
        "pixel_max_error": largest,
    }


# --- generation ---------------------------------------------------------------------------


def _as_inverted(model: LoadedModel, latents: torch.Tensor | Inverted) -> Inverted:
    """`latents` checked; a bare tensor (a mix, an upload) belongs to the family's default
    method."""
    if isinstance(latents, Inverted):
        check_latents(model, latents.latent)
        return latents
    check_latents(model, latents)
    return Inverted(latent=latents, method=default_inversion(model.card).name)


def _method_of(model: LoadedModel, inverted: Inverted) -> InversionMethod:
    return get_inversion(inverted.method, model.card)


@torch.inference_mode()
def sample(
    model: LoadedModel,
    latents: torch.Tensor | Inverted,
    embeddings: Conditioning,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Denoise noise latents x_T down to clean latents x0, float32 CPU, with the sampler of
    the method that made them (DDIM, eta = 0, for a bare tensor)."""
    inverted = _as_inverted(model, latents)
    check_guidance(guidance_scale)
    if len(embeddings) != len(inverted):
        raise ValueError(
            f"got prompt embeddings for {len(embeddings)} rows but {len(inverted)} latents"
        )
    method = _method_of(model, inverted)
    return method.sample(model, inverted, embeddings, steps, guidance_scale, progress)


def generate(
    model: LoadedModel,
    latents: torch.Tensor | Inverted,
    prompts: str | Sequence[str] | Conditioning,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    progress: ProgressFn | None = None,
) -> list[Image.Image]:
    """Denoise latents and decode them to images (method.md section 3).

    `latents` is a tensor [B, C, h, w] (stored, mixed) or an `Inverted` straight from
    `invert`. `prompts` is one prompt for all rows, one per row, or ready-made conditioning
    (e.g. the inputs' text embeddings mixed with the latents' weights).
    """
    inverted = _as_inverted(model, latents)
    _method_of(model, inverted).check(model, steps)
    check_guidance(guidance_scale)
    if isinstance(prompts, Conditioning):
        embeddings = prompts
    else:
        embeddings = encode_prompts(model, prompts_per_row(prompts, len(inverted)))
    x0 = sample(
        model,
        inverted,
        embeddings,
        steps=steps,
        guidance_scale=guidance_scale,
        progress=progress,
    )
    return decode_latents(model, x0)
