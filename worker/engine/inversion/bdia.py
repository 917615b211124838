"""BDIA-DDIM: bi-directional integration approximation (Zhang et al.; inversion.md
section 3).

With e_i = eps^(x_i, t_i) and D the DDIM map (`ddim.ddim_step`), sampling is

    x_2     = D(x_1, e_1; a_1 -> a_2)
    x_{i+1} = gamma (x_{i-1} - D(x_i, e_i; a_i -> a_{i-1})) + D(x_i, e_i; a_i -> a_{i+1}),
              i >= 2,

and, for gamma = 1, inversion undoes it exactly:

    x_N     = D(x_{N+1}, eps^(x_{N+1}, t_N); a_{N+1} -> a_N)     (a DDIM inversion step)
    x_{i-1} = (x_{i+1} - D(x_i, e_i; a_i -> a_{i+1})) / gamma + D(x_i, e_i; a_i -> a_{i-1}),
              i = N .. 2.

The state is the last two latents: `latent` is x_1, `aux["previous"]` is x_2 (the latent
the inversion produced just before x_1), and sampling from it skips the first step. A
latent without it (a fresh Gaussian, an upload) takes the first step as DDIM. gamma = 0
is DDIM sampling, bit for bit. Inversion divides by gamma at every step, so any gamma but
1 amplifies rounding without bound in float32 (measured: 1.2e5 round-trip error at
gamma 0.5, 50 steps): inversion accepts gamma = 1 only. Cost: one guided estimate per step.
"""

from __future__ import annotations

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


def check_sampling_gamma(gamma: float) -> None:
    """Sampling accepts gamma in [0, 1] (0 is DDIM)."""
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"bdia_gamma must be a number in [0, 1] for sampling, got {gamma!r}")


def invert(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    options: Mapping[str, Any] | None = None,
) -> Inverted:
    """BDIA-invert clean latents x0 to the pair (x_1, x_2) at t_1 and t_2 (gamma = 1)."""
    options, sampler = ddim.method_options(options, specs.BDIA)  # inversion: gamma 1 only
    gamma = float(options["bdia_gamma"])
    schedule = sampler.schedule(model, steps)
    alphas = (*schedule.alphas, schedule.final_alpha)  # a_1 .. a_{N+1}, zero-based
    chunks = row_chunks(model, len(x0), inverting=True)
    total = steps * len(chunks)
    noise = _at_step(schedule, sampler.counted_noise(model, guidance_scale, progress, total))

    firsts, seconds = [], []
    for start, stop in chunks:
        rows = conditioning.rows(start, stop)
        later = x0[start:stop].to(model.device, torch.float32)  # x_{N+1}
        last = steps - 1  # zero-based index of sampling step N
        # 1. x_N: one DDIM inversion step
        current = ddim.ddim_step(later, noise(later, last, rows), alphas[last + 1], alphas[last])
        # 2. x_{i-1} from x_{i+1} and x_i, i = N .. 2
        for i in range(last, 0, -1):
            e = noise(current, i, rows)
            forward = ddim.ddim_step(current, e, alphas[i], alphas[i + 1])
            backward = ddim.ddim_step(current, e, alphas[i], alphas[i - 1])
            later, current = current, (later - forward) / gamma + backward
        firsts.append(current.cpu())
        seconds.append(later.cpu())
    first, second = torch.cat(firsts), torch.cat(seconds)
    if steps == 1:  # one step: x_1 is the DDIM inversion, and there is no x_2 to keep
        return Inverted(latent=first, method=BDIA.name, settings=_settings(schedule, gamma))
    return Inverted(
        latent=first,
        aux={"previous": second},
        method=BDIA.name,
        settings=_settings(schedule, gamma),
    )


def _at_step(schedule: ddim.DdimSchedule, noise: ddim.NoiseFn) -> ddim.NoiseFn:
    """`noise` taking the zero-based index i of a sampling step instead of its timestep."""
    return lambda x, i, rows: noise(x, schedule.timesteps[i], rows)


def _settings(schedule: ddim.DdimSchedule, gamma: float) -> dict[str, Any]:
    return {"start_timestep": schedule.timesteps[0], "bdia_gamma": gamma}


def sample(
    model: LoadedModel,
    inverted: Inverted,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """BDIA sampling from x_1 (and x_2, when the latent has it) to clean latents x_{N+1}."""
    gamma = float(inverted.settings.get("bdia_gamma", specs.INVERTIBLE_BDIA_GAMMA))
    check_sampling_gamma(gamma)
    sampler = ddim.Sampler.of(inverted.settings)
    schedule = sampler.schedule(model, steps)
    alphas = (*schedule.alphas, schedule.final_alpha)
    previous_state = inverted.aux.get("previous") if gamma != 0.0 else None
    chunks = row_chunks(model, len(inverted), inverting=False)
    total = (steps - (previous_state is not None)) * len(chunks)
    noise = _at_step(schedule, sampler.counted_noise(model, guidance_scale, progress, total))

    results = []
    for start, stop in chunks:
        rows = conditioning.rows(start, stop)
        earlier = inverted.latent[start:stop].to(model.device, torch.float32)  # x_1
        # 1. x_2: stored by the inversion, or one DDIM step
        if previous_state is not None:
            current = previous_state[start:stop].to(model.device, torch.float32)
        else:
            current = ddim.ddim_step(earlier, noise(earlier, 0, rows), alphas[0], alphas[1])
        # 2. x_{i+1} from x_{i-1} and x_i, i = 2 .. N
        for i in range(1, steps):
            e = noise(current, i, rows)
            forward = ddim.ddim_step(current, e, alphas[i], alphas[i + 1])
            if gamma == 0.0:  # DDIM, bit for bit
                earlier, current = current, forward
                continue
            backward = ddim.ddim_step(current, e, alphas[i], alphas[i - 1])
            earlier, current = current, gamma * (earlier - backward) + forward
        results.append(current.cpu())
    return torch.cat(results)


BDIA = InversionMethod(specs.BDIA, check=ddim.check, invert=invert, sample=sample)
