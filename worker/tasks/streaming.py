"""What the mix and morph jobs share: their input latents read, their mixed latents stored
as latents in their own right, and their images streamed batch by batch (uploaded, then
appended to the job's partial result, which clients poll)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import MixImage, MorphFrame
from latentmix.service.core.images import encode_png
from latentmix.service.core.jobs import append_partial_result, fetch_job, view_job
from latentmix.service.core.latents import LatentRecord, image_key
from latentmix.worker.engine.results import Inverted
from latentmix.worker.runtime import WorkerContext


class LatentUnavailable(RuntimeError):
    """An input latent of a mix is missing (its inversion failed or was canceled)."""


def ready_record(ctx: WorkerContext, latent_id: str, producer_id: str | None) -> LatentRecord:
    """The input's record, or an error that says why it is missing."""
    record = ctx.catalog.record(latent_id)
    if record is not None:
        return record
    reason = "it is not stored"
    if producer_id and (producer := fetch_job(ctx.redis, producer_id)) is not None:
        view = view_job(ctx.redis, producer)
        reason = f"its {view.type} job {producer_id} ended {view.status}: {view.error}"
    raise LatentUnavailable(f"latent {latent_id} is not available: {reason}")


def store_mixed_latent(
    ctx: WorkerContext, state: Inverted, image: MixImage | MorphFrame, inversion: str | None
) -> bool:
    """Store one mixed latent (with its mixed state and the inversion method its inputs
    came from, None for plain latents) as a latent in its own right; return whether its
    image is stored already. Images are stored only after their latent: a new latent has
    none."""
    latent = state.latent[0].numpy()
    aux = {name: value[0].numpy() for name, value in state.aux.items()}
    record = LatentRecord.describe(
        image.latent,
        latent,
        model=ctx.settings.model,
        source="mix",
        parents=image.provenance.inputs,
        weights=image.provenance.weights,
        method=image.provenance.method,
        prompt=image.provenance.prompt,
        inversion=inversion,
        settings=dict(state.settings),
        aux={name: list(value.shape) for name, value in aux.items()},
        aux_bytes=sum(value.nbytes for value in aux.values()),
    )
    if ctx.catalog.publish(record, latent, aux):
        return False
    return ctx.storage.exists(image_key(image.id))


class ImageStream:
    """A job's images (mix images or morph frames) streamed as they finish: each batch's PNGs
    uploaded, then the batch appended to the job's partial result, which clients poll.

    Rows with the same image id (identical weight rows: the same picture) are rendered once:
    `copies` maps each later one to the first, and is listed together with it."""

    def __init__(self, ctx: WorkerContext, job: Job, images: Sequence[MixImage | MorphFrame]):
        self.ctx, self.job, self.images = ctx, job, images
        self.copies: dict[int, int] = {}  # row -> the earlier row with the same image
        first: dict[str, int] = {}
        for index, image in enumerate(images):
            original = first.setdefault(image.id, index)
            if original != index:
                self.copies[index] = original

    def store_latents(self, publish: Callable[[int], bool]) -> list[Future | None]:
        """`publish(row)` (store the row's mixed latent; whether its image is stored) for each
        row but the copies, on the storage threads: the latents are stored while the first
        batches generate. A copy's entry is None (`rows_to_render` skips it)."""
        return [
            None if row in self.copies else self.ctx.storage.io.submit(publish, row)
            for row in range(len(self.images))
        ]

    def list(self, rows: list[int]) -> None:
        listed = set(rows)
        rows = rows + [copy for copy, row in self.copies.items() if row in listed]
        finished = [self.images[i].model_dump(mode="json") for i in rows]
        append_partial_result(self.ctx.redis, self.job.id, finished, self.ctx.settings)

    def publish(self, rows: list[int], pictures: list[Image.Image]) -> None:
        def upload(index: int, picture: Image.Image) -> None:
            key = image_key(self.images[index].id)
            self.ctx.storage.put(key, encode_png(picture), "image/png")

        self.ctx.storage.in_parallel(upload, rows, pictures)
        self.list(rows)


def rows_to_render(
    rendered: list[Future | None], size: int, on_rendered: Callable[[list[int]], None]
) -> Iterator[tuple[list[int], int]]:
    """Batches of the rows whose image is not stored yet, each as soon as its rows are
    known, with the number of batches planned so far (rows not yet known count as to be
    rendered). The rows whose image is stored go to `on_rendered`, together, before the
    next batch. Rows without a future (copies of an earlier row) are skipped."""
    batch: list[int] = []
    stored: list[int] = []
    yielded = 0
    unknown = sum(future is not None for future in rendered)
    for index, future in enumerate(rendered):
        if future is None:
            continue
        (stored if future.result() else batch).append(index)
        unknown -= 1
        if stored and (len(batch) == size or not unknown):
            on_rendered(stored)
            stored = []
        if len(batch) == size or (batch and not unknown):
            yield batch, yielded + 1 + math.ceil(unknown / size)
            yielded += 1
            batch = []


def check_one_shape(records: list[LatentRecord]) -> None:
    """The inputs' shapes agree. The API checked those stored when it planned the job, not
    those of latents still being inverted then (their size is the inversion's)."""
    shapes = {tuple(r.shape) for r in records}
    if len(shapes) > 1:
        raise ValueError(f"latents have different shapes: {sorted(shapes)}")
