"""What every task shares: its end reported once whatever the outcome (metrics, webhook),
progress and cancellation at diffusion steps, and batches published in the background
while the next one computes."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from latentmix.service.core.contract import Contract
from latentmix.service.core.jobs import (
    REDIS_ERRORS,
    STOPPED_BY_SHUTDOWN,
    JobStatus,
    cancel_requested,
    report_job_end,
)
from latentmix.worker.runtime import (
    JobInterrupted,
    RedisUnavailable,
    WorkerContext,
    check_interrupted,
    context,
    log,
    redis_outage_error,
)


class JobCanceled(Exception):
    """Raised at a diffusion step after a client canceled the running job."""


# Progress is saved, and a cancel looked for, at most this often (and at the last step).
PROGRESS_INTERVAL_S = 0.25


class BatchPublisher:
    """Runs a job's publishing work (uploads, then announcing the batch) in the background,
    one piece after another in the order given (on `publishing`, the worker's one publishing
    thread), so that the accelerator computes the next batch meanwhile. Leaving the `with`
    block waits for all of it and re-raises the first failure."""

    def __init__(self, publishing: Executor) -> None:
        self._publishing = publishing
        self._pending: list[Future] = []

    def submit(self, work: Callable[[], None]) -> None:
        self._pending.append(self._publishing.submit(work))

    def __enter__(self) -> BatchPublisher:
        return self

    def __exit__(self, exc_type, *_) -> None:
        failures = [future.exception() for future in self._pending]  # waits for each
        if exc_type is None and (failure := next(filter(None, failures), None)):
            raise failure


def in_batches(count: int, size: int) -> list[list[int]]:
    """Row indices 0..count-1 in consecutive batches of at most `size`."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def batch_progress(progress: Callable[[int, int], None], number: int, planned: int):
    """The engine's step count within batch `number` as progress over `planned` batches."""
    return lambda done, steps: progress(number * steps + done, planned * steps)


def task(request_model: type[Contract], upgrade: Callable[[dict], dict] | None = None):
    """An RQ task from `run(ctx, job, request) -> result`: parses the job's request with
    its contract model (a request that does not fit fails the job, naming the field;
    `upgrade` first turns an older release's request into today's), returns the result as
    JSON, and reports the job's end (metrics, webhook) once, whatever the outcome."""

    def adapt(run: Callable[[WorkerContext, Job, Any], Contract]):
        @functools.wraps(run)
        def rq_task(raw: dict[str, Any]) -> dict[str, Any]:
            ctx, job = context(), get_current_job()
            started = time.monotonic()
            outcome: dict[str, Any] = {"status": JobStatus.failed, "error": None, "result": None}
            try:
                request = request_model.model_validate(upgrade(raw) if upgrade else raw)
                outcome["result"] = run(ctx, job, request).model_dump(mode="json")
                outcome["status"] = JobStatus.succeeded
                _complete_progress(job)
                return outcome["result"]
            except JobCanceled:
                outcome.update(status=JobStatus.canceled, error="canceled")
                raise
            except JobInterrupted as exc:
                outcome = None if exc.requeue else outcome | {"error": STOPPED_BY_SHUTDOWN}
                raise
            except REDIS_ERRORS as exc:
                outage = RedisUnavailable(f"{redis_outage_error(ctx.settings)}: {exc}")
                outcome["error"] = f"{type(outage).__name__}: {outage}"
                raise outage from exc
            except Exception as exc:
                outcome["error"] = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                if outcome is not None:  # None: requeued, it has not ended
                    _report_end(ctx, job, time.monotonic() - started, outcome)

        return rq_task

    return adapt


def _complete_progress(job: Job) -> None:
    """A succeeded job shows its progress at its total, even if it skipped planned steps
    (a morph's keyframes and stored frames are not rendered again)."""
    progress = job.meta.get("progress") or {}
    if progress.get("total") and progress.get("done") != progress["total"]:
        job.meta["progress"] = {"done": progress["total"], "total": progress["total"]}
        job.save_meta()


def _report_end(ctx: WorkerContext, job: Job, duration_s: float, outcome: dict[str, Any]):
    try:
        report_job_end(ctx.redis, ctx.settings, job, duration_s=duration_s, **outcome)
    except REDIS_ERRORS:  # the worker reports it once Redis is back
        log.warning("job %s: its end could not be reported yet", job.id)


def progress_reporter(redis: Redis, job: Job) -> Callable[[int, int], None]:
    """Engine progress callback: writes step counts to the job's meta and stops a canceled
    job, both at most every PROGRESS_INTERVAL_S (Redis round trips cost little, but they add
    up over every step of every batch); stops the job at once when its worker is told to
    stop now (JobInterrupted)."""

    saved_at = -math.inf

    def report(done: int, total: int) -> None:
        nonlocal saved_at
        check_interrupted(job.id)
        now = time.monotonic()
        if now - saved_at < PROGRESS_INTERVAL_S and done != total:
            return
        if cancel_requested(redis, job.id):
            raise JobCanceled(f"job {job.id} canceled")
        job.meta["progress"] = {"done": done, "total": total}
        job.save_meta()
        saved_at = now

    return report
