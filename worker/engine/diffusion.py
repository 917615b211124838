"""The engine's operations: invert images into noise latents, and generate images from
latents (method.md sections 1 and 3).

Each call goes through the model's family (`families/`: encoders, denoiser) and an
inversion method (`inversion/`: the schedule and the loops). `ddim.py` holds the DDIM update
and the timestep convention inversion and generation share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from PIL import Image

from latentmix.worker.engine import reconstruction
from latentmix.worker.engine.checks import (
    check_guidance,
    check_latents,
    check_size,
    prompts_per_row,
)
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion import (
    INVERSION_METHODS,
    InversionMethod,
    bdia,
    default_inversion,
    edict,
    fixed_point,
    get_inversion,
    null_text,
)
from latentmix.worker.engine.models import LoadedModel
from latentmix.worker.engine.results import Inverted, ProgressFn

# The method the engine had before there was a choice; its records carry no "method" key.
ORIGINAL_METHOD = "ddim"
# The settings every method records; the fields after `method` are methods' options.
_COMMON_FIELDS = ("steps", "guidance_scale", "size")


@dataclass(frozen=True)
class InversionSettings:
    """What an inversion runs with. The method options after `method` belong each to one
    method (`InversionMethod.options`); a method's records carry its own options only, so
    DDIM records (and the ids derived from them) are what they were before there were any."""

    steps: int = 50
    guidance_scale: float = 7.5
    size: int | None = None  # image side in pixels; None = the model's default
    method: str = ORIGINAL_METHOD  # a name in inversion.INVERSION_METHODS
    # fixed-point: iterations per step (0 is DDIM), ReNoise averaging of the last estimates
    inversion_iterations: int = fixed_point.DEFAULTS["inversion_iterations"]
    renoise_average: bool = fixed_point.DEFAULTS["renoise_average"]
    edict_mix: float = edict.DEFAULTS["edict_mix"]  # edict: the mixing weight p
    bdia_gamma: float = bdia.DEFAULTS["bdia_gamma"]  # bdia: 1 only, for inversion
    # null-text: Adam iterations per sampling step
    null_text_iterations: int = null_text.DEFAULTS["null_text_iterations"]
    # every DDIM-type method, in inversion and generation alike (None: not recorded):
    timestep_spacing: str | None = None  # "leading" | "trailing"; None: the scheduler's
    guidance_rescale: float | None = None  # phi of Lin et al. eq. 16; None: 0

    def resolved(self, model: LoadedModel) -> InversionSettings:
        """These settings with `size` filled in from the model, validated."""
        size = model.default_size if self.size is None else self.size
        resolved = replace(self, guidance_scale=float(self.guidance_scale), size=size)
        method = get_inversion(resolved.method, model.card)
        method.check(model, resolved.steps)
        resolved.check_options(method)
        check_guidance(resolved.guidance_scale)
        check_size(model, size)
        return resolved

    def options(self, method: InversionMethod) -> dict[str, Any]:
        """The method's own options, by name (those left at None are not set)."""
        return {
            name: value for name in method.options if (value := getattr(self, name)) is not None
        }

    def check_options(self, method: InversionMethod) -> None:
        """ValueError, naming the method's options, when an option of another method is set;
        then the method's own checks of its values."""
        defaults = InversionSettings()
        for name in OPTION_NAMES:
            if name not in method.options and getattr(self, name) != getattr(defaults, name):
                raise ValueError(
                    f"option {name!r} does not apply to inversion method {method.name!r}; "
                    f"{method.name!r} takes options {list(method.options)}"
                )
        method.check_options(self.options(method))

    def as_dict(self) -> dict[str, Any]:
        """The settings as recorded with a latent: `method` only when it is not DDIM, and the
        options of that method only."""
        record: dict[str, Any] = {name: getattr(self, name) for name in _COMMON_FIELDS}
        if self.method != ORIGINAL_METHOD:
            record["method"] = self.method
        method = INVERSION_METHODS.get(self.method)
        if method is not None:
            record.update(self.options(method))
        return record


OPTION_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(InversionSettings) if f.name not in (*_COMMON_FIELDS, "method")
)


def inversion_options(method: str) -> tuple[str, ...]:
    """The options `method` takes; ValueError naming the allowed methods if unknown."""
    known = INVERSION_METHODS.get(method)
    if known is None:
        raise ValueError(
            f"unknown inversion method {method!r}; allowed methods are {list(INVERSION_METHODS)}"
        )
    return known.options


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
    settings = settings.resolved(model)
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
        settings.options(method),
    )
    record = {
        **settings.as_dict(),
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
