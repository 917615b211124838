"""Fixed-point DDIM inversion, with optional ReNoise averaging (inversion.md section 4).

DDIM inversion approximates the noise estimate of the step that undoes sampling step i by
evaluating it on the less noisy latent x_{i+1}. The exact inverse solves

    x_i = D(x_{i+1}, eps^(x_i, t_i); a_{i+1} -> a_i)

for x_i. This method solves it by fixed-point iteration, K = `inversion_iterations` times:

    z^0     = D(x_{i+1}, eps^(x_{i+1}, t_i); a_{i+1} -> a_i)      (the DDIM step)
    z^{k+1} = D(x_{i+1}, eps^(z^k, t_i);     a_{i+1} -> a_i),      x_i = z^K.

K = 0 is DDIM inversion, bit for bit. With `renoise_average` (ReNoise,
garibida/ReNoise-Inversion) the final step uses the mean of the noise estimates of the last
ceil(K / 2) iterates instead of the last one alone. Each step costs K + 1 guided noise
estimates; generation is DDIM sampling unchanged, and the state is one latent.
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


def averaged_estimates(iterations: int) -> int:
    """How many of the last noise estimates ReNoise averages: ceil(K / 2), at least 1."""
    return max(1, math.ceil(iterations / 2))


def invert(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    options: Mapping[str, Any] | None = None,
) -> Inverted:
    """Invert clean latents x0 to noise latents at t_1, each step solved by iteration."""
    options, sampler = ddim.method_options(options, specs.FIXED_POINT)
    iterations = options["inversion_iterations"]
    averaged = averaged_estimates(iterations) if options["renoise_average"] else 1
    schedule = sampler.schedule(model, steps)
    inversion_steps = list(schedule.inversion_steps())
    chunks = row_chunks(model, len(x0), inverting=True)
    total = len(inversion_steps) * (iterations + 1) * len(chunks)
    noise = sampler.counted_noise(model, guidance_scale, progress, total)

    results = []
    for start, stop in chunks:
        x = x0[start:stop].to(model.device, torch.float32)
        rows = conditioning.rows(start, stop)
        for t, a_from, a_to in inversion_steps:
            estimates = [noise(x, t, rows)]  # 1. the DDIM step's estimate, at x_{i+1}
            z = ddim.ddim_step(x, estimates[-1], a_from, a_to)
            for _ in range(iterations):  # 2. re-estimate at the current guess of x_i
                estimates.append(noise(z, t, rows))
                z = ddim.ddim_step(x, estimates[-1], a_from, a_to)
            if averaged > 1:  # 3. ReNoise: step with the mean of the last estimates
                z = ddim.ddim_step(x, torch.stack(estimates[-averaged:]).mean(0), a_from, a_to)
            x = z
        results.append(x.cpu())
    return Inverted(
        latent=torch.cat(results),
        method=FIXED_POINT.name,
        settings={"start_timestep": schedule.timesteps[0]},
    )


FIXED_POINT = InversionMethod(
    specs.FIXED_POINT, check=ddim.check, invert=invert, sample=ddim.sample
)
