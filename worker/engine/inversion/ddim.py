"""DDIM inversion (clean latent -> noise latent) and DDIM sampling (noise latent -> clean).

method.md section 1 (inversion) and section 3 (generation). Both directions use one update,

    x_to = sqrt(a_to) * (x - sqrt(1 - a_from) * eps) / sqrt(a_from) + sqrt(1 - a_to) * eps,

with `a` the scheduler's cumulative alpha, and one noise estimate with classifier-free
guidance, `eps = eps_u + g (eps_c - eps_u)`, evaluated as a single doubled denoiser batch by
the model's family.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from latentmix.service.core import inversion_methods as specs
from latentmix.service.core.inversion_methods import TIMESTEP_SPACINGS
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion.base import (
    InversionMethod,
    row_chunks,
    step_counter,
)
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class Sampler:
    """The options every DDIM-type method takes, used identically in inversion and
    generation: the timestep spacing (None: the scheduler's own) and the guidance rescale
    phi (0: none). Read from a method's options, or from a latent's recorded settings."""

    spacing: str | None = None
    guidance_rescale: float = 0.0

    @classmethod
    def of(cls, options: Mapping[str, Any] | None) -> Sampler:
        options = options or {}
        spacing, rescale = options.get("timestep_spacing"), options.get("guidance_rescale")
        if spacing not in (None, *TIMESTEP_SPACINGS):
            raise ValueError(
                f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}"
            )
        if rescale is not None and not (isinstance(rescale, int | float) and 0 <= rescale <= 1):
            raise ValueError(f"guidance_rescale must be a number in [0, 1], got {rescale!r}")
        return cls(spacing, float(rescale or 0.0))

    def schedule(self, model: LoadedModel, steps: int) -> DdimSchedule:
        return ddim_schedule(model, steps, self.spacing)

    def noise(
        self, model: LoadedModel, x: torch.Tensor, t: int, rows: Conditioning, guidance: float
    ) -> torch.Tensor:
        """The guided noise estimate eps^ at timestep t (a v-prediction converted)."""
        output = model.family.predict(model, x, t, rows, guidance, self.guidance_rescale)
        return model.family.to_noise(model, output, x, t)

    def counted_noise(
        self, model: LoadedModel, guidance: float, progress: ProgressFn | None, total: int
    ) -> NoiseFn:
        """`noise(x, t, rows)` at this guidance, each call reported to `progress` as one
        more of `total` denoiser steps."""
        step = step_counter(progress, total)

        def noise(x: torch.Tensor, t: int, rows: Conditioning) -> torch.Tensor:
            step()
            return self.noise(model, x, t, rows, guidance)

        return noise


NoiseFn = Callable[[torch.Tensor, int, Conditioning], torch.Tensor]


def method_options(
    options: Mapping[str, Any] | None, spec: specs.InversionMethodSpec
) -> tuple[dict[str, Any], Sampler]:
    """A DDIM-type method's options over its spec's defaults, checked, and the sampler they
    name."""
    merged = spec.parse(options).model_dump()
    return merged, Sampler.of(merged)


# --- the schedule -------------------------------------------------------------------------


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


def ddim_schedule(model: LoadedModel, steps: int, spacing: str | None = None) -> DdimSchedule:
    """The DDIM timesteps the sampler uses for `steps` steps (a fresh scheduler per call),
    with the scheduler's own timestep spacing or `spacing` ("leading", "trailing": Lin et
    al., section 3.3)."""
    check_steps(model, steps, spacing)
    _check_prediction_type(model)
    scheduler = _fresh_scheduler(model, spacing)
    scheduler.set_timesteps(steps)
    timesteps = tuple(int(t) for t in scheduler.timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    return DdimSchedule(
        timesteps=timesteps,
        alphas=tuple(float(alphas_cumprod[t]) for t in timesteps),
        final_alpha=float(scheduler.final_alpha_cumprod),
    )


def _fresh_scheduler(model: LoadedModel, spacing: str | None = None):
    """A private copy, so set_timesteps never mutates the shared pipeline's scheduler."""
    from diffusers import DDIMScheduler

    overrides = {} if spacing is None else {"timestep_spacing": spacing}
    return DDIMScheduler.from_config(model.pipe.scheduler.config, **overrides)


def check_steps(model: LoadedModel, steps: int, spacing: str | None = None) -> None:
    config = model.pipe.scheduler.config
    if spacing not in (None, *TIMESTEP_SPACINGS):
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    train_steps = int(config.num_train_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be an integer in [1, {train_steps}], got {steps!r}")
    # "leading" spacing with steps_offset=1 puts the largest timestep at
    # (N-1) * (T // N) + 1, which is out of range for N = T (e.g. 1000 steps).
    if (spacing or config.timestep_spacing) == "leading":
        largest = (steps - 1) * (train_steps // steps) + int(config.steps_offset)
        if largest >= train_steps:
            raise ValueError(
                f"steps={steps} puts a timestep at {largest}, beyond the scheduler's "
                f"{train_steps} training steps; use at most {train_steps - 1} steps"
            )


def check(model: LoadedModel, steps: int) -> None:
    """What DDIM needs of the model and the step count; ValueError before any compute."""
    check_steps(model, steps)
    _check_prediction_type(model)


def _check_prediction_type(model: LoadedModel) -> None:
    prediction_type = model.pipe.scheduler.config.prediction_type
    if prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise ValueError(
            f"model {model.name!r} predicts {prediction_type!r}; supported prediction types are "
            f"{SUPPORTED_PREDICTION_TYPES}"
        )


PLAIN_SAMPLER = Sampler()  # the scheduler's spacing, no guidance rescale


# --- one step -----------------------------------------------------------------------------


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """One deterministic DDIM update (eta = 0) from noise level a_from to a_to.

    The same map serves both directions (inversion.md section 0, `D(x, e; a -> a')`):
    a_to > a_from samples (less noise), a_to < a_from inverts (method.md section 1).
    Written like `DDIMScheduler.step`, whose numbers it matches.
    """
    # 1. the clean latent the noise estimate implies:
    #    x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from)   (DDIM eq. 12, "predicted x_0")
    predicted_x0 = (x - math.sqrt(1.0 - a_from) * eps) / math.sqrt(a_from)
    # 2. the direction pointing to x_to; with eta = 0 there is no fresh noise
    #    (DDIM eq. 12, "direction pointing to x_t")
    direction = math.sqrt(1.0 - a_to) * eps
    # 3. x_to = sqrt(a_to) x0 + direction   (method.md section 1)
    return math.sqrt(a_to) * predicted_x0 + direction


def _run_ddim(
    model: LoadedModel,
    latents: torch.Tensor,
    conditioning: Conditioning,
    steps: Sequence[tuple[int, float, float]],
    guidance_scale: float,
    progress: ProgressFn | None,
    sampler: Sampler | None = None,
    *,
    inverting: bool,
) -> torch.Tensor:
    """Run `steps` over the batch in chunks (`row_chunks`); float32 CPU result."""
    sampler = sampler or PLAIN_SAMPLER
    chunks = row_chunks(model, len(latents), inverting=inverting)
    step = step_counter(progress, len(steps) * len(chunks))
    results = []
    for start, stop in chunks:
        x = latents[start:stop].to(model.device, torch.float32)
        rows = conditioning.rows(start, stop)
        for t, a_from, a_to in steps:
            x = ddim_step(x, sampler.noise(model, x, t, rows, guidance_scale), a_from, a_to)
            step()
        results.append(x.cpu())
    return torch.cat(results)


# --- the two directions -------------------------------------------------------------------


def invert(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    options: Mapping[str, Any] | None = None,
) -> Inverted:
    """DDIM-invert clean latents x0 to the noise latents x_T at t_1 (method.md section 1)."""
    sampler = Sampler.of(options)
    schedule = sampler.schedule(model, steps)
    inversion_steps = list(schedule.inversion_steps())
    latent = _run_ddim(
        model, x0, conditioning, inversion_steps, guidance_scale, progress, sampler, inverting=True
    )
    return Inverted(
        latent=latent, method=DDIM.name, settings={"start_timestep": schedule.timesteps[0]}
    )


def sample(
    model: LoadedModel,
    inverted: Inverted,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """DDIM (eta = 0) from noise latents x_T down to clean latents x0 (method.md section 3)."""
    sampler = Sampler.of(inverted.settings)
    sampling_steps = list(sampler.schedule(model, steps).sampling_steps())
    return _run_ddim(
        model,
        inverted.latent,
        conditioning,
        sampling_steps,
        guidance_scale,
        progress,
        sampler,
        inverting=False,
    )


DDIM = InversionMethod(specs.DDIM, check=check, invert=invert, sample=sample)
