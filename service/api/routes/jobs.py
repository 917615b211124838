"""GET /jobs/{id} (with ?wait=S), POST /jobs/{id}/cancel."""

import asyncio
import io
import time
from contextlib import suppress
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from rq.exceptions import InvalidJobOperation

from latentmix.service.api.deps import JobEventsDep, RedisDep, SettingsDep, StorageDep
from latentmix.service.api.job_views import JobIdPath, existing_job, public_job
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.schemas import JobPublic
from latentmix.service.core.images import encode_png
from latentmix.service.core.job_events import FALLBACK_POLL_S, announce
from latentmix.service.core.jobs import (
    JobStatus,
    JobView,
    fetch_job,
    report_job_end,
    request_cancel,
    view_job,
)
from latentmix.service.core.latents import image_key

router = APIRouter(tags=["jobs"])

MAX_GRID_IMAGES = 256


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=PROBLEM_RESPONSES)
async def get_job(
    job_id: JobIdPath,
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    events: JobEventsDep,
    wait: Annotated[
        float, Query(ge=0, description="hold the request until the job ends or S seconds pass")
    ] = 0,
    seen: Annotated[
        int | None,
        Query(ge=0, description="with wait: answer as soon as the job has more images than this"),
    ] = None,
) -> JobPublic:
    """A job's status, progress and result; `?wait=S` long-polls (S capped by the server),
    woken by the job's end or, with `seen`, by its new images."""
    deadline = time.monotonic() + min(wait, settings.max_wait_s)
    with events.watch(job_id) as changed:
        while True:
            changed.clear()  # before reading: a change after the read wakes the wait below
            view = await run_in_threadpool(existing_job, redis, job_id)
            left = deadline - time.monotonic()
            if view.status.is_terminal() or _has_news(view, seen) or left <= 0:
                return public_job(view, request)
            with suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, FALLBACK_POLL_S))


def _has_news(view: JobView, seen: int | None) -> bool:
    return seen is not None and len((view.result or {}).get("images") or []) > seen


@router.post(
    "/jobs/{job_id}/cancel", status_code=202, response_model=JobPublic, responses=PROBLEM_RESPONSES
)
def cancel_job(
    job_id: JobIdPath, request: Request, redis: RedisDep, settings: SettingsDep
) -> JobPublic:
    """Cancel a queued job now, or a running one within a quarter second (at a diffusion step)."""
    job = fetch_job(redis, job_id)
    if job is None:
        raise problem(404, f"job {job_id} not found")
    view = view_job(redis, job)
    if view.status.is_terminal():
        raise problem(409, f"job {job_id} already ended: {view.status}")
    request_cancel(redis, job_id, settings.failure_ttl_s)
    if view.status is JobStatus.queued:
        # Started or canceled in between: the flag stops it at a diffusion step.
        with suppress(InvalidJobOperation):
            job.cancel(enqueue_dependents=True)
            # No worker will see it: its end (metrics, webhook) is reported here.
            report_job_end(
                redis,
                settings,
                job,
                JobStatus.canceled,
                error="canceled",
                result=None,
                duration_s=0.0,
            )
        announce(redis, job_id)
    return public_job(view_job(redis, job), request)


@router.get(
    "/jobs/{job_id}/grid.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}} | PROBLEM_RESPONSES,
)
def get_job_grid(
    job_id: JobIdPath,
    redis: RedisDep,
    storage: StorageDep,
    columns: Annotated[int, Query(ge=1, le=32)] = 8,
    tile: Annotated[int, Query(ge=16, le=512, description="tile size in pixels")] = 128,
) -> Response:
    """A contact sheet of the job's images so far (at most the first 256), for a person."""
    images = ((existing_job(redis, job_id).result or {}).get("images") or [])[:MAX_GRID_IMAGES]
    if not images:
        raise problem(404, f"job {job_id} has no images (yet)")
    tiles = [Image.open(io.BytesIO(storage.get(image_key(image["id"])))) for image in images]
    return Response(encode_png(_contact_sheet(tiles, columns, tile)), media_type="image/png")


def _contact_sheet(tiles: list[Image.Image], columns: int, tile: int) -> Image.Image:
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), "white")
    for index, image in enumerate(tiles):
        thumbnail = image.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(thumbnail, ((index % columns) * tile, (index // columns) * tile))
    return sheet
