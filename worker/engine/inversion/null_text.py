"""Null-text inversion (Mokady et al. 2023; inversion.md section 1).

1. Pivot: DDIM inversion at guidance 1 gives the trajectory x*_1 (noise) .. x*_{N+1} (x0).
2. From x_1 = x*_1 and phi = u (the embedding of ""), for each sampling step i:
   eps_c = eps(x_i, t_i, c) once; minimise with Adam (lr 0.01 (1 - i / 100))
       L(phi) = || D(x_i, eps(x_i, t_i, phi) + g (eps_c - eps(x_i, t_i, phi)); a_i -> a_{i+1})
                  - x*_{i+1} ||^2
   for at most K = `null_text_iterations` Adam updates (the reference, google/prompt-to-
   prompt `null_text_w_ptp.ipynb`), evaluating every phi and keeping the best by its loss;
   stop early once L < 1% of the step's starting loss (the reference's absolute bound,
   1e-5 + 2e-5 i, fits SD 1.5's loss scale only). Advance x_{i+1} with phi_i (the kept
   phi's own step); phi carries over to the next step.
3. Generation is guided DDIM sampling with u replaced by phi_i at step i.

The state is `latent` = x*_1 and `aux["uncond_embeddings"]` [B, N, L, D], stored in float16
(half the size; the tested round trip stays in bound). The optimisation runs in float32
(phi, Adam's state and the loss) with gradients through the denoiser in the model's dtype;
only phi's gradient is computed (`torch.autograd.grad`), never the UNet's. Rows of a batch
are optimised together (each row's loss is its own mean; a step stops early once every
row's loss is below its bound). Cost: N pivot estimates, then per step one conditional
estimate and up to K + 1 unconditional ones (K with a backward pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from latentmix.service.core import inversion_methods as specs
from latentmix.worker.engine.families.base import Conditioning, guided
from latentmix.worker.engine.inversion import ddim
from latentmix.worker.engine.inversion.base import InversionMethod, row_chunks, step_counter
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

(EMBEDDINGS,) = specs.NULL_TEXT.state  # the aux tensor: phi_i per sampling step
STORED_DTYPE = torch.float16
LEARNING_RATE = 1e-2
EARLY_STOP_FRACTION = 1e-2  # stop a step once its loss < 1% of its starting loss


def invert(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    options: Mapping[str, Any] | None = None,
) -> Inverted:
    """Null-text-invert clean latents x0: the pivot's noise latent and phi_1 .. phi_N."""
    options, sampler = ddim.method_options(options, specs.NULL_TEXT)
    return invert_with(
        model, x0, conditioning, steps, guidance_scale, progress,
        iterations=options["null_text_iterations"], sampler=sampler,
    )  # fmt: skip


def invert_with(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    *,
    iterations: int,
    early_stop: bool = True,
    sampler: ddim.Sampler = ddim.PLAIN_SAMPLER,
) -> Inverted:
    """`invert` with the early stop optional (the paper's figures are without it)."""
    schedule = sampler.schedule(model, steps)
    chunks = row_chunks(model, len(x0), inverting=True)
    step = step_counter(progress, steps * (iterations + 3) * len(chunks))
    latents, embeddings = [], []
    for start, stop in chunks:
        rows = conditioning.rows(start, stop)
        pivot = _pivot(model, x0[start:stop], rows, schedule, sampler, step)
        latents.append(pivot[0].cpu())
        embeddings.append(
            _optimise(
                model, pivot, rows, schedule, sampler, guidance_scale, iterations, early_stop, step
            )
        )
    return Inverted(
        latent=torch.cat(latents),
        aux={EMBEDDINGS: torch.cat(embeddings).to(STORED_DTYPE)},
        method=NULL_TEXT.name,
        settings={"start_timestep": schedule.timesteps[0], "null_text_iterations": iterations},
    )


@torch.no_grad()
def _pivot(model, x0, rows, schedule, sampler, step) -> list[torch.Tensor]:
    """Step 1: the DDIM inversion trajectory at guidance 1, x*_1 (noise) first."""
    x = x0.to(model.device, torch.float32)
    trajectory = [x]
    for t, a_from, a_to in schedule.inversion_steps():
        x = ddim.ddim_step(x, sampler.noise(model, x, t, rows, 1.0), a_from, a_to)
        trajectory.append(x)
        step()
    return trajectory[::-1]


def _optimise(model, pivot, rows, schedule, sampler, guidance, iterations, early_stop, step):
    """Step 2: phi_i for each sampling step, [B, N, L, D] float32 CPU."""
    with torch.inference_mode(False), torch.enable_grad():
        # fresh tensors outside inference mode, so autograd may save them
        x = pivot[0].clone()
        cond = rows.cond.to(model.device, torch.float32).clone()
        phi = rows.uncond.to(model.device, torch.float32).expand_as(cond).clone()
        kept = []
        for i, (t, a_i, a_next) in enumerate(schedule.sampling_steps()):
            with torch.no_grad():
                eps_c = sampler.noise(model, x, t, _with(rows, cond), 1.0)
            step()

            def guided_step(phi, x=x, t=t, a_i=a_i, a_next=a_next, eps_c=eps_c):
                eps_u = sampler.noise(model, x, t, _with(rows, phi), 1.0)
                eps = guided(eps_u, eps_c, guidance, sampler.guidance_rescale)
                return ddim.ddim_step(x, eps, a_i, a_next)

            lr = LEARNING_RATE * (1.0 - i / 100.0)
            best = _best_embedding(
                guided_step, phi, pivot[i + 1].clone(), lr, iterations, early_stop, step
            )
            phi, x = best.phi, best.reconstructed  # advance with phi_i: its own step
            kept.append(phi.cpu())
    return torch.stack(kept, dim=1)


@dataclass
class _Best:
    """Per row, the lowest loss evaluated so far, its phi and the step it gives."""

    loss: torch.Tensor  # [B]
    phi: torch.Tensor  # [B, L, D]
    reconstructed: torch.Tensor  # [B, C, H, W]

    def keep(self, loss: torch.Tensor, phi: torch.Tensor, reconstructed: torch.Tensor) -> None:
        better = loss < self.loss
        self.loss = torch.where(better, loss, self.loss)
        self.phi = torch.where(better[:, None, None], phi, self.phi)
        self.reconstructed = torch.where(
            better[:, None, None, None], reconstructed, self.reconstructed
        )


def _best_embedding(guided_step, phi, target, lr, iterations, early_stop, step) -> _Best:
    """Adam on phi for one sampling step: up to `iterations` updates, every phi evaluated
    (the starting one too), the best by its own loss kept. Keeping the best, not the last,
    matters on a trained model: the reference keeps the last update unevaluated, which on
    `shapes` (20 steps, g = 7.5) threw step t = 51 off the pivot (latent RMSE 0.07 -> 0.32).
    Early stop once every row's loss is below `EARLY_STOP_FRACTION` of its loss at the
    start of the step: relative to the model's own loss scale, where the reference's
    absolute bound (1e-5 + 2e-5 i) fits SD 1.5 only (on `tiny` it ended every step at once;
    on `shapes` it never triggers)."""
    # a copy: Adam updates in place, and the previous step's kept phi must stay as it was
    # (sharing its storage stored phi_{i+1} as phi_i on CPU, where .cpu() copies nothing)
    phi = phi.detach().clone().requires_grad_(True)
    adam = torch.optim.Adam([phi], lr=lr)
    best = None
    for done in range(iterations + 1):
        reconstructed = guided_step(phi)
        losses = (reconstructed - target).pow(2).flatten(1).mean(1)
        step()
        if best is None:
            best = _Best(losses.detach(), phi.detach().clone(), reconstructed.detach())
            bound = EARLY_STOP_FRACTION * best.loss
        else:
            best.keep(losses.detach(), phi.detach().clone(), reconstructed.detach())
        if done == iterations or (early_stop and bool((best.loss < bound).all())):
            break
        (phi.grad,) = torch.autograd.grad(losses.sum(), [phi])
        adam.step()
    for _ in range(iterations - done):
        step()  # skipped evaluations count as done
    return best


def _with(rows: Conditioning, embeddings: torch.Tensor) -> Conditioning:
    """`rows` conditioned on `embeddings` instead of the prompt (for guidance 1 passes)."""
    return Conditioning(cond=embeddings, uncond=rows.uncond, pooled=rows.pooled, extra=rows.extra)


def sample(
    model: LoadedModel,
    inverted: Inverted,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Step 3: guided DDIM sampling with phi_i as the unconditional embedding at step i
    (plain DDIM for a latent without embeddings: an upload)."""
    embeddings = inverted.aux.get(EMBEDDINGS)
    if embeddings is None:
        return ddim.sample(model, inverted, conditioning, steps, guidance_scale, progress)
    if embeddings.shape[1] != steps:
        raise ValueError(
            f"null-text latents hold embeddings for {embeddings.shape[1]} steps; generate "
            f"with steps={embeddings.shape[1]}, not {steps}"
        )
    sampler = ddim.Sampler.of(inverted.settings)
    sampling_steps = list(sampler.schedule(model, steps).sampling_steps())
    chunks = row_chunks(model, len(inverted), inverting=False)
    step = step_counter(progress, steps * len(chunks))
    results = []
    for start, stop in chunks:
        x = inverted.latent[start:stop].to(model.device, torch.float32)
        rows = conditioning.rows(start, stop)
        phis = embeddings[start:stop].to(model.device, torch.float32)
        for i, (t, a_from, a_to) in enumerate(sampling_steps):
            per_step = Conditioning(cond=rows.cond, uncond=phis[:, i], pooled=rows.pooled)
            eps = sampler.noise(model, x, t, per_step, guidance_scale)
            x = ddim.ddim_step(x, eps, a_from, a_to)
            step()
        results.append(x.cpu())
    return torch.cat(results)


NULL_TEXT = InversionMethod(specs.NULL_TEXT, check=ddim.check, invert=invert, sample=sample)
