"""The invert job: uploaded images -> noise latents, published batch by batch."""

from __future__ import annotations

import functools
import io
import math

from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import (
    InvertItem,
    InvertRequest,
    InvertResult,
    ReconstructionMeasure,
    ReconstructionSample,
)
from latentmix.service.core.latents import LatentRecord, Reconstruction
from latentmix.worker.engine.diffusion import invert, named_method
from latentmix.worker.engine.inversion import InversionMethod
from latentmix.worker.engine.results import Inverted
from latentmix.worker.runtime import WorkerContext
from latentmix.worker.tasks.reporting import (
    BatchPublisher,
    batch_progress,
    in_batches,
    progress_reporter,
    task,
)


@task(InvertRequest)
def invert_images(ctx: WorkerContext, job: Job, request: InvertRequest) -> InvertResult:
    """Invert uploaded images into noise latents and publish them, batch by batch."""
    items = request.items
    # Fetched side by side; a batch waits only for its own images.
    images = [ctx.storage.io.submit(_fetch_image, ctx, item.upload_key) for item in items]
    progress = progress_reporter(ctx.redis, job)
    batches = in_batches(len(items), ctx.model.inversion_batch_size)
    method = named_method(request.settings, ctx.model.card)
    measured = measured_per_batch(request.measure_reconstruction, method, batches)
    with BatchPublisher(ctx.publishing) as publisher:
        for number, rows in enumerate(batches):
            result = invert(
                ctx.model,
                [images[i].result() for i in rows],
                [items[i].prompt for i in rows],
                request.settings,
                progress=batch_progress(progress, number, len(batches)),
                measure=measured[number],
            )
            batch_items = [items[i] for i in rows]
            sample_of = len(items) if request.measure_reconstruction == "sample" else None
            publish = functools.partial(_publish_inverted, ctx, batch_items, result, sample_of)
            publisher.submit(publish)
    latent_ids = [item.latent_id for item in items]
    # Claims of a failed job stay until they expire: GET /latents/{id} then reports the
    # failure, and a new request takes the claim over (LatentCatalog.claim).
    ctx.catalog.release(latent_ids, job.id)
    measured_ids = [
        items[batch[0] + row].latent_id
        for batch, count in zip(batches, measured, strict=True)
        for row in range(count)
    ]
    sample = ReconstructionSample(
        measure=request.measure_reconstruction, measured=measured_ids, of=len(items)
    )
    return InvertResult(latents=latent_ids, reconstruction=sample)


def measured_per_batch(
    measure: ReconstructionMeasure, method: InversionMethod, batches: list[list[int]]
) -> list[int]:
    """How many leading rows of each batch to regenerate for their round trip: every row
    (`all`), none, or by default one row, the last batch's first (its progress then ends
    the job's: the earlier batches count steps as they would unmeasured), and none for a
    method exact by construction, whose round trip would only measure float rounding."""
    if measure == "all":
        return [len(rows) for rows in batches]
    if measure == "none" or method.exact:
        return [0] * len(batches)
    return [0] * (len(batches) - 1) + [1]


def _publish_inverted(
    ctx: WorkerContext, items: list[InvertItem], result: Inverted, sample_of: int | None
) -> None:
    def publish(index: int, item: InvertItem) -> None:
        latent = result.latent[index].numpy()
        aux = {name: state[index].numpy() for name, state in result.aux.items()}
        record = LatentRecord.describe(
            item.latent_id,
            latent,
            model=ctx.settings.model,
            source="image",
            settings=result.settings,
            prompt=item.prompt,
            inversion=result.method,
            source_image=item.upload_key,
            aux={name: list(state.shape) for name, state in aux.items()},
            aux_bytes=sum(state.nbytes for state in aux.values()),
            reconstruction=_reconstruction(result, index, sample_of),
        )
        ctx.catalog.publish(record, latent, aux)

    ctx.storage.in_parallel(publish, range(len(items)), items)


def _reconstruction(result: Inverted, index: int, sample_of: int | None) -> Reconstruction | None:
    """Row `index`'s measured round-trip error, if measured (as a job's sample: of how many
    latents)."""
    if not result.reconstruction:
        return None
    errors = {name: float(values[index]) for name, values in result.reconstruction.items()}
    if math.isnan(errors["latent_rmse"]):
        return None
    psnr = errors["pixel_psnr_db"]
    return Reconstruction(
        latent_rmse=errors["latent_rmse"],
        pixel_psnr_db=psnr if math.isfinite(psnr) else None,  # identical pictures
        pixel_max_error=int(errors["pixel_max_error"]),
        sample_of=sample_of,
    )


def _fetch_image(ctx: WorkerContext, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(ctx.storage.get(key)))
    image.load()
    return image
