"""RQ task adapters: JSON request in, JSON result out; storage and Redis at the edges,
the engine in the middle. Enqueued by dotted path (`service.jobs.INVERT_TASK`, ...)."""

import functools
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image
from rq import get_current_job
from rq.job import Job

from service.images import encode_png
from service.job_metrics import record_job_end
from service.jobs import (
    JobStatus,
    append_partial_result,
    cancel_requested,
    fetch_job,
    view_job,
)
from service.latents import (
    LatentRecord,
    image_id,
    image_key,
    mixed_latent_id,
)
from service.webhooks import enqueue_delivery
from worker.engine.diffusion import InversionSettings, generate, invert
from worker.engine.mixing import mix
from worker.runtime import WorkerContext, context


class JobCanceled(Exception):
    """Raised at the next diffusion step after a client canceled the running job."""


class LatentUnavailable(RuntimeError):
    """An input latent of a mix is missing (its inversion failed or was canceled)."""


# Storage calls are network round trips: a job makes its independent ones side by side.
_STORAGE_IO = ThreadPoolExecutor(max_workers=8, thread_name_prefix="latentmix-storage")


def _in_parallel(fn, *iterables) -> list:
    """`fn` over the iterables on the storage I/O threads; results in order."""
    return list(_STORAGE_IO.map(fn, *iterables))


def _observed(job_type: str):
    """Count the job's end in the metrics and send its webhook, whatever the outcome."""

    def decorate(task):
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
                _job_ended(ctx, job, job_type, time.monotonic() - started, **outcome)

        return run

    return decorate


def _job_ended(ctx: WorkerContext, job: Job, job_type: str, duration_s: float, **outcome):
    waited = job.started_at - job.enqueued_at if job.started_at and job.enqueued_at else None
    record_job_end(
        ctx.redis,
        job_type,
        outcome["status"].value,
        duration_s,
        waited.total_seconds() if waited else 0.0,
    )
    if url := job.meta.get("webhook"):
        payload = {"id": job.id, "type": job_type, "model": ctx.settings.model} | outcome
        enqueue_delivery(ctx.redis, ctx.settings, url, payload)


@_observed("invert")
def invert_images(request: dict[str, Any]) -> dict[str, Any]:
    """Invert uploaded images into noise latents and publish them."""
    ctx, job = context(), get_current_job()
    items = request["items"]
    latent_ids = [item["latent_id"] for item in items]
    images = _in_parallel(lambda item: _open_image(ctx.storage.get(item["upload_key"])), items)
    result = invert(
        ctx.model,
        images,
        [item["prompt"] for item in items],
        InversionSettings(**request["settings"]),
        progress=_progress_reporter(ctx, job),
    )

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

    _in_parallel(publish, items, result.latents)
    # Claims of a failed job stay until they expire: GET /latents/{id} then reports the
    # failure, and a new request takes the claim over (LatentCatalog.claim).
    ctx.catalog.release(latent_ids, job.id)
    return {"latents": latent_ids}


@_observed("mix")
def mix_latents(request: dict[str, Any]) -> dict[str, Any]:
    """Mix input latents with each weight row, publish the mixes, generate their images.

    Images are generated batch by batch; each finished batch is appended to the job's
    partial result at once (in completion order), so clients can download while the job
    runs."""
    ctx, job = context(), get_current_job()
    producers = request.get("producers", {})
    records = [_ready_record(ctx, i, producers.get(i)) for i in request["latents"]]
    _check_compatible(records, ctx.settings.model)
    stack = torch.stack(_in_parallel(lambda r: torch.from_numpy(ctx.catalog.load(r.id)), records))
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
    entries = _in_parallel(
        lambda row, latent: _publish_mix(ctx, latent, row, provenance), request["weights"], mixed
    )
    # Images rendered before (same latent, prompt and settings) are published at once.
    found = _in_parallel(lambda entry: ctx.storage.exists(image_key(entry["id"])), entries)
    rendered = {i for i, exists in enumerate(found) if exists}
    append_partial_result(ctx.redis, job.id, [entries[i] for i in sorted(rendered)], ctx.settings)
    todo = [i for i in range(len(entries)) if i not in rendered]
    batch = ctx.model.max_batch_size
    batches = [todo[start : start + batch] for start in range(0, len(todo), batch)]
    progress = _progress_reporter(ctx, job)
    for number, rows in enumerate(batches):
        images = generate(
            ctx.model,
            mixed[rows],
            prompt,
            steps=steps,
            guidance_scale=guidance,
            progress=lambda done, _, n=number: progress(n * steps + done, len(batches) * steps),
        )
        _in_parallel(
            lambda index, image: ctx.storage.put(
                image_key(entries[index]["id"]), encode_png(image), "image/png"
            ),
            rows,
            images,
        )
        append_partial_result(ctx.redis, job.id, [entries[i] for i in rows], ctx.settings)
    return {
        "latents": [entry["latent"] for entry in entries],
        "images": entries,
        **{key: provenance[key] for key in ("method", "prompt", "seed", "steps", "guidance_scale")},
    }


def _publish_mix(ctx: WorkerContext, latent: torch.Tensor, row: list[float], provenance: dict):
    """Store one mixed latent as a latent in its own right; return its image entry."""
    inputs, method, prompt = provenance["inputs"], provenance["method"], provenance["prompt"]
    mixed_id = mixed_latent_id(inputs, row, method)
    record = LatentRecord.describe(
        mixed_id,
        latent.numpy(),
        model=ctx.settings.model,
        source="mix",
        parents=inputs,
        weights=row,
        method=method,
        prompt=prompt,
    )
    ctx.catalog.publish(record, latent.numpy())
    return {
        "id": image_id(mixed_id, prompt, provenance["steps"], provenance["guidance_scale"]),
        "latent": mixed_id,
        "provenance": provenance | {"weights": row},
    }


def _progress_reporter(ctx: WorkerContext, job: Job):
    """Engine progress callback: writes step counts to the job's meta and stops a
    canceled job at its next step."""

    def report(done: int, total: int) -> None:
        if cancel_requested(ctx.redis, job.id):
            raise JobCanceled(f"job {job.id} canceled")
        job.meta["progress"] = {"done": done, "total": total}
        job.save_meta()

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


def _open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
