"""The measure job: an inversion job's sampled latent regenerated, its round trip's error
written to its record. Queued on the model's background queue by the inversion job, so the
sample costs the request nothing (worker/tasks/invert.py)."""

from __future__ import annotations

import io

import torch
from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import MeasureRequest, MeasureResult
from latentmix.service.core.latents import measured_reconstruction
from latentmix.worker.engine.diffusion import round_trip
from latentmix.worker.engine.results import Inverted
from latentmix.worker.runtime import WorkerContext
from latentmix.worker.tasks.reporting import progress_reporter, task


@task(MeasureRequest)
def measure_reconstructions(ctx: WorkerContext, job: Job, request: MeasureRequest) -> MeasureResult:
    """Regenerate each latent with its own method, steps and guidance, against the image
    and prompt it was inverted from; record the errors (as a sample of `sample_of`)."""
    progress = progress_reporter(ctx.redis, job)
    for latent_id in request.latents:
        record = ctx.catalog.record(latent_id)
        if record is None or record.source_image is None:
            raise ValueError(f"latent {latent_id} has no stored source image to measure against")
        array, aux = ctx.catalog.load(latent_id), ctx.catalog.load_aux(latent_id)
        inverted = Inverted(
            latent=torch.from_numpy(array)[None],
            aux={name: torch.from_numpy(state)[None] for name, state in aux.items()},
            method=record.inversion,
            settings=record.settings,
        )
        image = Image.open(io.BytesIO(ctx.storage.get(record.source_image)))
        errors = round_trip(
            ctx.model, inverted, [image.convert("RGB")], record.prompt or "", progress
        )
        measured = {name: float(values[0]) for name, values in errors.items()}
        reconstruction = measured_reconstruction(measured, request.sample_of)
        amended = record.model_copy(update={"reconstruction": reconstruction})
        ctx.catalog.amend(amended, array, aux)
    return MeasureResult(measured=request.latents)
