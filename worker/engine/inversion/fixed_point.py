"""Fixed-point DDIM inversion, with optional ReNoise averaging (inversion.md section 4).

DDIM inversion approximates the noise estimate of the step that undoes sampling step i by
evaluating it on the less noisy latent x_{i+1}. The exact inverse solves

    x_i = D(x_{i+1}, eps^(x_i, t_i); a_{i+1} -> a_i)

for x_i. This method solves it by iteration, at most K = `inversion_iterations` times:

    z^0     = D(x_{i+1}, eps^(x_{i+1}, t_i); a_{i+1} -> a_i)      (the DDIM step)
    G(z)    = D(x_{i+1}, eps^(z, t_i);       a_{i+1} -> a_i),      residual |G(z) - z|,

each next guess Anderson's combination of the last G(z)'s (AIDI), and x_i = G(z) of the
guess whose residual is least (`solve_step`). K = 0 is DDIM inversion, bit for bit. With
`renoise_average` (ReNoise, garibida/ReNoise-Inversion) the final step uses the mean of the
noise estimates of the last ceil(K / 2) iterates instead. Each step costs at most K + 1
guided noise estimates; the latent records per step the iterations used and the largest
final residual (`iterations_used`, `final_residual`, in inversion order). Generation is
DDIM sampling unchanged, and the state is one latent.

On `shapes` at guidance 7.5 one step does not contract: the second from the clean end
(t = 51 of 20 steps), where plain iteration's residual grows (0.19, 0.16, 0.21, ..., 0.47
over 8 iterations) and Anderson's falls slowly (to 0.074); every other step contracts by
0.1-0.4 per iteration (docs/inversion-on-shapes.md).
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

ANDERSON_DEPTH = 2  # earlier guesses Anderson combines with the newest
TOLERANCE = 1e-5  # stop once every row's residual RMS < this times its latent's RMS


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

    results, records = [], []
    for start, stop in chunks:
        x = x0[start:stop].to(model.device, torch.float32)
        rows = conditioning.rows(start, stop)
        for t, a_from, a_to in inversion_steps:
            x, record = solve_step(
                lambda z, t=t, rows=rows: noise(z, t, rows), x, a_from, a_to, iterations, averaged
            )
            records.append(record)
        results.append(x.cpu())
    return Inverted(
        latent=torch.cat(results),
        method=FIXED_POINT.name,
        settings={"start_timestep": schedule.timesteps[0], **convergence(records, steps)},
    )


def solve_step(noise, x, a_from, a_to, iterations, averaged=1):
    """x_i for one step, and its record: (iterations used, largest final residual).

    z^0 is the DDIM step; each iteration evaluates G(z) = D(x, eps^(z)) at the current
    guess, whose residual is |G(z) - z| (RMS per row). The next guess is Anderson's
    (Pan et al., AIDI, eq. 8-9, depth `ANDERSON_DEPTH`): the combination of the last
    G(z)'s whose combined residual is least; with one G(z) it is plain iteration. The
    result is G(z) of the guess with the least residual seen, so more iterations never
    give a larger residual than fewer; it stops early once every row's residual is below
    `TOLERANCE` times the latent's RMS. ReNoise averaging, if asked, steps instead with
    the mean of the last `averaged` estimates."""
    estimates = [noise(x)]
    z = ddim.ddim_step(x, estimates[0], a_from, a_to)
    if iterations == 0:
        return z, (0, float("nan"))
    best_residual = torch.full((len(x),), float("inf"), device=x.device)
    best = z
    guesses, images = [], []
    tolerance = TOLERANCE * x.pow(2).flatten(1).mean(1).sqrt()
    done = 0
    while done < iterations:
        done += 1
        estimates.append(noise(z))
        image = ddim.ddim_step(x, estimates[-1], a_from, a_to)
        residual = (image - z).pow(2).flatten(1).mean(1).sqrt()
        better = residual < best_residual
        best_residual = torch.where(better, residual, best_residual)
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), image, best)
        if bool((best_residual < tolerance).all()):
            break
        guesses, images = [*guesses[-ANDERSON_DEPTH:], z], [*images[-ANDERSON_DEPTH:], image]
        z = anderson(guesses, images)
    if averaged > 1:
        best = ddim.ddim_step(x, torch.stack(estimates[-averaged:]).mean(0), a_from, a_to)
    return best, (done, float(best_residual.max()))


def anderson(guesses: list[torch.Tensor], images: list[torch.Tensor]) -> torch.Tensor:
    """The next guess of Anderson's type-II mixing, per row: with residuals f_j = G(z_j) - z_j,
    gamma minimising |f_k - dF gamma| over the differences dF of consecutive residuals, and
    z = G(z_k) - dG gamma (Walker & Ni 2011, eq. 3.1; AIDI's Anderson step)."""
    if len(guesses) == 1:
        return images[0]
    rows = len(guesses[0])
    residuals = torch.stack(
        [(g - z).reshape(rows, -1) for z, g in zip(guesses, images, strict=True)], -1
    )
    flat = torch.stack([g.reshape(rows, -1) for g in images], -1)
    d_residuals = (residuals[..., 1:] - residuals[..., :-1]).double()
    d_images = (flat[..., 1:] - flat[..., :-1]).double()
    gamma = torch.linalg.lstsq(d_residuals, residuals[..., -1:].double()).solution
    z = flat[..., -1:].double() - d_images @ gamma
    return z.float().reshape(images[-1].shape)


def convergence(records: list[tuple[int, float]], steps: int) -> dict[str, list]:
    """Per inversion step (in inversion order, from the clean end), the most iterations
    any batch used and the largest final residual of any row (0 with no iterations).
    `records` holds each batch's steps in turn."""
    per_step = [records[step::steps] for step in range(steps)]
    return {
        "iterations_used": [max(used for used, _ in step) for step in per_step],
        "final_residual": [
            max((residual for used, residual in step if used), default=0.0) for step in per_step
        ],
    }


FIXED_POINT = InversionMethod(
    specs.FIXED_POINT, check=ddim.check, invert=invert, sample=ddim.sample
)
