"""EDICT: exact inversion with two coupled sequences (Wallace et al. 2023; inversion.md
section 2).

Write the DDIM map of sampling step i (a_i -> a_{i+1}) as D(x, e) = alpha x + beta e,
alpha = sqrt(a_{i+1} / a_i), beta = sqrt(1 - a_{i+1}) - sqrt(a_{i+1} (1 - a_i) / a_i).
With the mix p = `edict_mix` (0.93 in the paper), generation step i is

    x'  = alpha x + beta eps^(y, t_i)          y'  = alpha y + beta eps^(x', t_i)
    x'' = p x' + (1 - p) y'                    y'' = p y' + (1 - p) x''

and inversion undoes it exactly, in the reverse step order:

    y' = (y'' - (1 - p) x'') / p               x' = (x'' - (1 - p) y') / p
    y  = (y' - beta eps^(x', t_i)) / alpha     x  = (x' - beta eps^(y, t_i)) / alpha.

Inversion starts from x = y = x0; the state is the pair (x, y): `latent` is x, `aux["y"]`
is y. Generation from a latent without y (a fresh Gaussian, an upload) starts from (z, z).
The sequences keep a fixed order each step (no leapfrog alternation), in both directions.
All arithmetic is float32 on the model's device; the round trip is exact up to rounding.
Cost: two sequential guided estimates per step in each direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from latentmix.service.core import inversion_methods as specs
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion import ddim
from latentmix.worker.engine.inversion.base import InversionMethod, row_chunks
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel


def coefficients(a_from: float, a_to: float) -> tuple[float, float]:
    """(alpha, beta) with D(x, e; a_from -> a_to) = alpha x + beta e."""
    alpha = math.sqrt(a_to / a_from)
    beta = math.sqrt(1.0 - a_to) - math.sqrt(a_to * (1.0 - a_from) / a_from)
    return alpha, beta


def _mix_of(settings: Mapping[str, Any]) -> float:
    """The mix p a latent was inverted with (the default for a latent without one), checked."""
    given = {"edict_mix": settings["edict_mix"]} if "edict_mix" in settings else {}
    return float(specs.EDICT.parse(given).edict_mix)


def invert(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    options: Mapping[str, Any] | None = None,
) -> Inverted:
    """EDICT-invert clean latents x0 to the pair (x, y) at t_1."""
    options, sampler = ddim.method_options(options, specs.EDICT)
    p = float(options["edict_mix"])
    schedule = sampler.schedule(model, steps)
    chunks = row_chunks(model, len(x0), inverting=True)
    noise = sampler.counted_noise(model, guidance_scale, progress, 2 * steps * len(chunks))

    xs, ys = [], []
    for start, stop in chunks:
        x = x0[start:stop].to(model.device, torch.float32)
        y = x.clone()
        rows = conditioning.rows(start, stop)
        for t, a_i, a_next in reversed(list(schedule.sampling_steps())):
            alpha, beta = coefficients(a_i, a_next)
            # 1. undo the mixing, y first (it was mixed last)
            y = (y - (1.0 - p) * x) / p
            x = (x - (1.0 - p) * y) / p
            # 2. undo the two DDIM half-steps, y first (its estimate used x')
            y = (y - beta * noise(x, t, rows)) / alpha
            x = (x - beta * noise(y, t, rows)) / alpha
        xs.append(x.cpu())
        ys.append(y.cpu())
    return Inverted(
        latent=torch.cat(xs),
        aux={"y": torch.cat(ys)},
        method=EDICT.name,
        settings={"start_timestep": schedule.timesteps[0], "edict_mix": p},
    )


def sample(
    model: LoadedModel,
    inverted: Inverted,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """EDICT generation from (x, y) (y = x when the latent has none) to clean latents x."""
    p = _mix_of(inverted.settings)
    sampler = ddim.Sampler.of(inverted.settings)
    schedule = sampler.schedule(model, steps)
    chunks = row_chunks(model, len(inverted), inverting=False)
    noise = sampler.counted_noise(model, guidance_scale, progress, 2 * steps * len(chunks))

    results = []
    for start, stop in chunks:
        x = inverted.latent[start:stop].to(model.device, torch.float32)
        y_state = inverted.aux.get("y")
        y = x.clone() if y_state is None else y_state[start:stop].to(model.device, torch.float32)
        rows = conditioning.rows(start, stop)
        for t, a_i, a_next in schedule.sampling_steps():
            alpha, beta = coefficients(a_i, a_next)
            # 1. two coupled DDIM half-steps, each stepping with the other's estimate
            x = alpha * x + beta * noise(y, t, rows)
            y = alpha * y + beta * noise(x, t, rows)
            # 2. mix, which keeps the pair from drifting apart
            x = p * x + (1.0 - p) * y
            y = p * y + (1.0 - p) * x
        results.append(x.cpu())
    return torch.cat(results)


EDICT = InversionMethod(specs.EDICT, check=ddim.check, invert=invert, sample=sample)
