"""RQ task adapters: JSON request in, JSON result out; storage and Redis at the edges,
the engine in the middle. Enqueued by dotted path (`service.jobs.INVERT_TASK`, ...)."""

from __future__ import annotations

import functools
import io
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image
from rq import get_current_job
from rq.job import Job

from latentmix.service.images import encode_png
from latentmix.service.jobs import (
    JobStatus,
    append_partial_result,
    cancel_requested,
    fetch_job,
    report_job_end,
    view_job,
)
from latentmix.service.latents import (
    LatentRecord,
    image_id,
    image_key,
    mixed_latent_id,
)
from latentmix.service.storage import STORAGE_IO, in_parallel
from latentmix.worker.engine.diffusion import InversionSettings, generate, invert
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.results import Inverted
from latentmix.worker.runtime import WorkerContext, context


class JobCanceled(Exception):
    """Raised at a diffusion step after a client canceled the running job."""


class LatentUnavailable(RuntimeError):
    """An input latent of a mix is missing (its inversion failed or was canceled)."""


# Publishes finished batches one after another, while the next batch computes.
_PUBLISHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentmix-publish")
# Progress is saved, and a cancel looked for, at most this often (and at the last step).
PROGRESS_INTERVAL_S = 0.25


class BatchPublisher:
    """Runs a job's publishing work (uploads, then announcing the batch) in the background,
    one piece after another in the order given, so that the accelerator computes the next
    batch meanwhile. Leaving the `with` block waits for all of it and re-raises the first
    failure."""

    def __init__(self) -> None:
        self._pending: list[Future] = []

    def submit(self, work: Callable[[], None]) -> None:
        self._pending.append(_PUBLISHING.submit(work))

    def __enter__(self) -> BatchPublisher:
        return self

    def __exit__(self, exc_type, *_) -> None:
        failures = [future.exception() for future in self._pending]  # waits for each
        if exc_type is None and (failure := next(filter(None, failures), None)):
            raise failure


def _in_batches(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def _batch_progress(progress: Callable[[int, int], None], number: int, planned: int):
    """The engine's step count within batch `number` as progress over `planned` batches."""
    return lambda done, steps: progress(number * steps + done, planned * steps)


def _observed(task):
    """Count the job's end in the metrics and send its webhook, whatever the outcome."""

    @functools.wraps(task)
    def run(request: dict[str, Any]) -> dict[str, Any]:
        ctx, job = context(), get_current_job()
        started = time.monotonic()
        outcome: dict[str, Any] = {"status": JobStatus.failed, "error": None, "result": None}
        try:
            outcome["result"] = task(request)
            outcome["status"] = JobStatus.succeeded
            return outcome["result"]
        except JobCanceled:
            outcome.update(status=JobStatus.canceled, error="canceled")
            raise
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            duration_s = time.monotonic() - started
            report_job_end(ctx.redis, ctx.settings, job, duration_s=duration_s, **outcome)

    return run


@_observed
def invert_images(request: dict[str, Any]) -> dict[str, Any]:
    """Invert uploaded images into noise latents and publish them, batch by batch."""
    ctx, job = context(), get_current_job()
    items = request["items"]
    settings = InversionSettings(**request["settings"])
    # Fetched side by side; a batch waits only for its own images.
    images = [STORAGE_IO.submit(_fetch_image, ctx, item["upload_key"]) for item in items]
    progress = _progress_reporter(ctx, job)
    batches = _in_batches(len(items), ctx.model.max_batch_size)
    with BatchPublisher() as publisher:
        for number, rows in enumerate(batches):
            result = invert(
                ctx.model,
                [images[i].result() for i in rows],
                [items[i]["prompt"] for i in rows],
                settings,
                progress=_batch_progress(progress, number, len(batches)),
            )
            batch_items = [items[i] for i in rows]
            publisher.submit(functools.partial(_publish_inverted, ctx, batch_items, result))
    latent_ids = [item["latent_id"] for item in items]
    # Claims of a failed job stay until they expire: GET /latents/{id} then reports the
    # failure, and a new request takes the claim over (LatentCatalog.claim).
    ctx.catalog.release(latent_ids, job.id)
    return {"latents": latent_ids}


def _publish_inverted(ctx: WorkerContext, items: list[dict], result: Inverted) -> None:
    def publish(item: dict[str, Any], latent: torch.Tensor) -> None:
        record = LatentRecord.describe(
            item["latent_id"],
            latent.numpy(),
            model=ctx.settings.model,
            source="image",
            settings=result.settings,
            prompt=item["prompt"],
        )
        ctx.catalog.publish(record, latent.numpy())

    in_parallel(publish, items, result.latent)


@_observed
def mix_latents(request: dict[str, Any]) -> dict[str, Any]:
    """Mix input latents with each weight row, publish the mixes, generate their images.

    Images are generated batch by batch; each finished batch is uploaded while the next one
    computes, then appended to the job's partial result, so clients can download while the
    job runs. A mix rendered before (same latent, prompt and settings) is not rendered
    again: it is appended at once."""
    ctx, job = context(), get_current_job()
    producers = request.get("producers", {})
    records = [_ready_record(ctx, i, producers.get(i)) for i in request["latents"]]
    _check_compatible(records, ctx.settings.model)
    stack = torch.stack(in_parallel(lambda r: torch.from_numpy(ctx.catalog.load(r.id)), records))
    mixed = mix(stack, request["weights"], request["method"])
    prompt = request.get("prompt")
    if prompt is None:
        prompt = _common(r.prompt for r in records) or ""
    steps = request.get("steps") or _common(r.settings.get("steps") for r in records) or 50
    guidance = request["guidance_scale"]
    provenance = {
        "inputs": request["latents"],
        "method": request["method"],
        "prompt": prompt,
        "seed": request.get("seed"),
        "steps": steps,
        "guidance_scale": guidance,
    }
    entries = [_image_entry(row, provenance) for row in request["weights"]]
    # The mixed latents are stored while the first batches generate.
    rendered = [
        STORAGE_IO.submit(_publish_mix, ctx, latent, entry, provenance)
        for latent, entry in zip(mixed, entries, strict=True)
    ]

    def list_finished(rows: list[int]) -> None:
        append_partial_result(ctx.redis, job.id, [entries[i] for i in rows], ctx.settings)

    def publish_batch(rows: list[int], images: list[Image.Image]) -> None:
        def upload(index: int, image: Image.Image) -> None:
            ctx.storage.put(image_key(entries[index]["id"]), encode_png(image), "image/png")

        in_parallel(upload, rows, images)
        list_finished(rows)

    progress = _progress_reporter(ctx, job)
    with BatchPublisher() as publisher:
        batches = _rows_to_render(
            rendered,
            ctx.model.max_batch_size,
            on_rendered=lambda rows: publisher.submit(functools.partial(list_finished, rows)),
        )
        generated = 0
        for rows, planned in batches:
            images = generate(
                ctx.model,
                mixed[rows],
                prompt,
                steps=steps,
                guidance_scale=guidance,
                progress=_batch_progress(progress, generated, planned),
            )
            publisher.submit(functools.partial(publish_batch, rows, images))
            generated += 1
        if generated:  # fewer batches than planned when the last rows were rendered before
            progress(generated * steps, generated * steps)
    return {
        "latents": [entry["latent"] for entry in entries],
        "images": entries,
        **{key: provenance[key] for key in ("method", "prompt", "seed", "steps", "guidance_scale")},
    }


def _rows_to_render(
    rendered: list[Future], size: int, on_rendered: Callable[[list[int]], None]
) -> Iterator[tuple[list[int], int]]:
    """Batches of the rows whose image is not stored yet, each as soon as its rows are
    known, with the number of batches planned so far (rows not yet known count as to be
    rendered). The rows whose image is stored go to `on_rendered`, together, before the
    next batch."""
    batch: list[int] = []
    stored: list[int] = []
    yielded = 0
    for index, future in enumerate(rendered):
        (stored if future.result() else batch).append(index)
        unknown = len(rendered) - index - 1
        if stored and (len(batch) == size or not unknown):
            on_rendered(stored)
            stored = []
        if len(batch) == size or (batch and not unknown):
            yield batch, yielded + 1 + math.ceil(unknown / size)
            yielded += 1
            batch = []


def _image_entry(row: list[float], provenance: dict) -> dict[str, Any]:
    inputs, method, prompt = provenance["inputs"], provenance["method"], provenance["prompt"]
    mixed_id = mixed_latent_id(inputs, row, method)
    return {
        "id": image_id(mixed_id, prompt, provenance["steps"], provenance["guidance_scale"]),
        "latent": mixed_id,
        "provenance": provenance | {"weights": row},
    }


def _publish_mix(ctx: WorkerContext, latent: torch.Tensor, entry: dict, provenance: dict) -> bool:
    """Store one mixed latent as a latent in its own right; return whether its image is
    stored already. Images are stored only after their latent: a new latent has none."""
    record = LatentRecord.describe(
        entry["latent"],
        latent.numpy(),
        model=ctx.settings.model,
        source="mix",
        parents=provenance["inputs"],
        weights=entry["provenance"]["weights"],
        method=provenance["method"],
        prompt=provenance["prompt"],
    )
    if ctx.catalog.publish(record, latent.numpy()):
        return False
    return ctx.storage.exists(image_key(entry["id"]))


def _progress_reporter(ctx: WorkerContext, job: Job):
    """Engine progress callback: writes step counts to the job's meta and stops a canceled
    job, both at most every PROGRESS_INTERVAL_S (Redis round trips cost little, but they add
    up over every step of every batch)."""

    saved_at = -math.inf

    def report(done: int, total: int) -> None:
        nonlocal saved_at
        now = time.monotonic()
        if now - saved_at < PROGRESS_INTERVAL_S and done != total:
            return
        if cancel_requested(ctx.redis, job.id):
            raise JobCanceled(f"job {job.id} canceled")
        job.meta["progress"] = {"done": done, "total": total}
        job.save_meta()
        saved_at = now

    return report


def _ready_record(ctx: WorkerContext, latent_id: str, producer_id: str | None) -> LatentRecord:
    """The input's record, or an error that says why it is missing."""
    record = ctx.catalog.record(latent_id)
    if record is not None:
        return record
    reason = "it is not stored"
    if producer_id and (producer := fetch_job(ctx.redis, producer_id)) is not None:
        view = view_job(ctx.redis, producer)
        reason = f"its {view.type} job {producer_id} ended {view.status}: {view.error}"
    raise LatentUnavailable(f"latent {latent_id} is not available: {reason}")


def _check_compatible(records: list[LatentRecord], model: str) -> None:
    shapes = {tuple(r.shape) for r in records}
    if len(shapes) > 1:
        raise ValueError(f"latents have different shapes: {sorted(shapes)}")
    foreign = [r.id for r in records if r.model != model]
    if foreign:
        raise ValueError(f"latents {foreign} belong to another model than {model}")


def _common(values):
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _fetch_image(ctx: WorkerContext, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(ctx.storage.get(key)))
    image.load()
    return image
