"""The invert job: uploaded images -> noise latents, published batch by batch."""

from __future__ import annotations

import functools
import io
import uuid

from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import (
    MEASURE,
    InvertItem,
    InvertRequest,
    InvertResult,
    MeasureRequest,
    ReconstructionMeasure,
    ReconstructionSample,
)
from latentmix.service.core.jobs import enqueue
from latentmix.service.core.latents import LatentRecord, Reconstruction, measured_reconstruction
from latentmix.worker.batching import invert_rows
from latentmix.worker.engine.diffusion import named_method
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
    inside = measured_in_job(request.measure_reconstruction)
    with BatchPublisher(ctx.publishing) as publisher:
        for number, rows in enumerate(batches):
            result = invert_rows(  # with other jobs' images, when batched (worker/batching.py)
                ctx.model,
                [images[i].result() for i in rows],
                [items[i].prompt for i in rows],
                request.settings,
                progress=batch_progress(progress, number, len(batches)),
                measure=inside,
            )
            batch_items = [items[i] for i in rows]
            publish = functools.partial(_publish_inverted, ctx, batch_items, result)
            publisher.submit(publish)
    latent_ids = [item.latent_id for item in items]
    # Claims of a failed job stay until they expire: GET /latents/{id} then reports the
    # failure, and a new request takes the claim over (LatentCatalog.claim).
    ctx.catalog.release(latent_ids, job.id)
    if request.measure_reconstruction == "sample" and not method.exact:
        return InvertResult(latents=latent_ids, reconstruction=_sample(ctx, latent_ids))
    sample = ReconstructionSample(
        measure=request.measure_reconstruction,
        measured=latent_ids if inside else [],
        of=len(items),
    )
    return InvertResult(latents=latent_ids, reconstruction=sample)


def measured_in_job(measure: ReconstructionMeasure) -> bool:
    """Whether the job regenerates its latents to measure their round trip: every one
    (`all`), or none (`none`, and `sample`, which is measured after the job, off its
    critical path: _sample)."""
    return measure == "all"


def _sample(ctx: WorkerContext, latent_ids: list[str]) -> ReconstructionSample:
    """The job's first latent, queued for its round trip on the background queue (a worker
    takes it when no request waits; worker/tasks/measure.py). A method exact by
    construction has no sample: its round trip would only measure float rounding."""
    request = MeasureRequest(latents=latent_ids[:1], sample_of=len(latent_ids))
    measuring = enqueue(
        ctx.redis,
        ctx.settings,
        job_type=MEASURE,
        model=ctx.settings.model,
        request=request,
        job_id=uuid.uuid4().hex,
        background=True,
    )
    return ReconstructionSample(
        measure="sample", measured=request.latents, of=len(latent_ids), job=measuring.id
    )


def _publish_inverted(ctx: WorkerContext, items: list[InvertItem], result: Inverted) -> None:
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
            reconstruction=_reconstruction(result, index),
        )
        ctx.catalog.publish(record, latent, aux)

    ctx.storage.in_parallel(publish, range(len(items)), items)


def _reconstruction(result: Inverted, index: int) -> Reconstruction | None:
    """Row `index`'s round-trip error, if measured."""
    if not result.reconstruction:
        return None
    return measured_reconstruction(
        {name: float(values[index]) for name, values in result.reconstruction.items()}
    )


def _fetch_image(ctx: WorkerContext, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(ctx.storage.get(key)))
    image.load()
    return image
