"""Jobs on RQ: queues, statuses, enqueueing, progress and results (what each job type's
request and result hold is in service/core/contract.py).

Jobs go through RQ with the JSON serializer (no pickles in Redis) and are enqueued by
dotted path, so the API never imports the worker's torch code. Each model has its own
queue; a worker listens on the queue of the model it has loaded.
"""

import json
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job
from rq.job import JobStatus as RQStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, import_attribute
from rq.utils import now as rq_now

from latentmix.service.core.config import Settings
from latentmix.service.core.contract import INVERT, JOB_TYPES, MIX, Contract, JobType
from latentmix.service.core.job_events import announce
from latentmix.service.core.job_metrics import record_job_end
from latentmix.service.core.webhooks import DELIVER_TASK, enqueue_delivery

QUEUE_PREFIX = "latentmix:"
# A model's work no request waits for (an inversion's sampled round trip): its workers take
# from this queue only when their others are empty (worker/runtime.py).
BACKGROUND_PREFIX = "latentmix-background:"
# Redis being away (as opposed to a command that failed): the API answers 503 and retries
# later, workers wait for it.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)
# A worker retries Redis with exponential backoff up to this pause between tries
# (worker/runtime.py): after an outage, its next heartbeat may come this much later.
REDIS_BACKOFF_CAP_S = 8.0
CANCEL_KEY = "latentmix:cancel:{job_id}"
ENDED_KEY = "latentmix:job-ended:{job_id}"  # set by whoever reports the job's end first
PARTIAL_KEY = "latentmix:partial:{job_id}"


# The functions a job may name. RQ imports and calls whatever function, and whatever
# callbacks, a job stored in Redis names; workers and the reaper load jobs as LatentMixJob,
# which runs only these and no callbacks, so write access to Redis is not code execution.
TASKS = frozenset({*JOB_TYPES, DELIVER_TASK})
# Task paths before the `latentmix` namespace (0.1): jobs queued by the previous release
# still run after an upgrade (their requests too: see worker/tasks/mix.py). To be dropped
# in the release after next.
LEGACY_TASKS = {
    "worker.tasks.invert_images": INVERT.task,
    "worker.tasks.mix_latents": MIX.task,
    "service.webhooks.deliver": DELIVER_TASK,
}


def task_of(job: Job) -> str | None:
    """The task path `job` runs, old names read as today's."""
    return LEGACY_TASKS.get(job.func_name, job.func_name)


def job_type_of(job: Job) -> JobType | None:
    """The job's type, or None for a job that is not an inversion or a mix (a delivery)."""
    return JOB_TYPES.get(task_of(job))


def job_request(job: Job) -> Contract:
    """The request a job of the service's was queued with, parsed by its job type's model."""
    return job_type_of(job).request.model_validate(job.args[0])


def type_name(job: Job) -> str:
    job_type = job_type_of(job)
    return job_type.name if job_type else job.func_name


class UnknownTask(RuntimeError):
    """A job names a function that is not a LatentMix task."""


class LatentMixJob(Job):
    """An RQ job that can run only a LatentMix task (`TASKS`), with no callbacks."""

    @property
    def func(self):
        task = task_of(self)
        if task not in TASKS or self.instance is not None:
            raise UnknownTask(f"{self.func_name!r} is not a LatentMix task; the job is refused")
        return import_attribute(task)

    # The service sets no callbacks; a callback named in Redis is never imported.
    success_callback = failure_callback = stopped_callback = property(lambda self: None)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


_FROM_RQ = {
    RQStatus.CREATED: JobStatus.queued,
    RQStatus.QUEUED: JobStatus.queued,
    RQStatus.DEFERRED: JobStatus.queued,
    RQStatus.SCHEDULED: JobStatus.queued,
    RQStatus.READY_TO_ENQUEUE: JobStatus.queued,
    RQStatus.RATE_LIMITED: JobStatus.queued,
    RQStatus.STARTED: JobStatus.running,
    RQStatus.FINISHED: JobStatus.succeeded,
    RQStatus.FAILED: JobStatus.failed,
    RQStatus.STOPPED: JobStatus.canceled,
    RQStatus.CANCELED: JobStatus.canceled,
}


def queue_name(model: str) -> str:
    return QUEUE_PREFIX + model


def model_of_queue(name: str) -> str | None:
    return name.removeprefix(QUEUE_PREFIX) if name.startswith(QUEUE_PREFIX) else None


def get_queue(redis: Redis, model: str) -> Queue:
    return Queue(queue_name(model), connection=redis, serializer=JSONSerializer)


def background_queue(redis: Redis, model: str) -> Queue:
    return Queue(BACKGROUND_PREFIX + model, connection=redis, serializer=JSONSerializer)


def running_count(queue: Queue) -> int:
    """Jobs a live worker is running from `queue`: entries of RQ's started registry (the
    sorted set `rq:wip:<queue>`) whose heartbeat deadline has not passed. A dead worker's
    job stays there, past its deadline, until the reaper fails it; RQ's own `count` would
    fail it on the spot, unreported (no webhook, no metrics), so this only reads."""
    key = queue.started_job_registry.key
    return queue.connection.zcount(key, current_timestamp(), "+inf")


def enqueue(
    redis: Redis,
    settings: Settings,
    *,
    job_type: JobType,
    model: str,
    request: Contract,
    job_id: str,
    depends_on: list[str] | None = None,
    webhook: str | None = None,
    background: bool = False,
) -> Job:
    """Enqueue `job_type`'s task with `request` on `model`'s queue (`background`: its
    background queue, where it waits at most a result TTL). Dependencies may fail: the task
    then reports which input is missing instead of waiting forever."""
    if not isinstance(request, job_type.request):
        raise TypeError(f"a {job_type.name} job takes a {job_type.request.__name__}")
    dependency = Dependency(jobs=depends_on, allow_failure=True) if depends_on else None
    queue = background_queue(redis, model) if background else get_queue(redis, model)
    job = queue.enqueue(
        job_type.task,
        request.model_dump(mode="json"),
        job_id=job_id,
        depends_on=dependency,
        job_timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        meta={"progress": {"done": 0, "total": 0}, "webhook": webhook},
        description=f"{job_type.name} on {model}",
        ttl=settings.result_ttl_s if background else None,
    )
    wait_for_replicas(redis, settings)
    return job


class ReplicationLag(RedisConnectionError):
    """Fewer replicas than LATENTMIX_REDIS_MIN_REPLICAS acknowledged a write in time (the
    API answers 503: the job may be lost in a failover, or may run; a retry with the same
    Idempotency-Key is safe)."""


def wait_for_replicas(redis: Redis, settings: Settings, timeout_ms: int = 1000) -> None:
    """Until `redis_min_replicas` replicas have every write made so far (Redis WAIT)."""
    wanted = settings.redis_min_replicas
    if wanted and (acked := redis.wait(wanted, timeout_ms)) < wanted:
        raise ReplicationLag(
            f"only {acked} of {wanted} Redis replicas acknowledged the job within "
            f"{timeout_ms / 1000:g} s (LATENTMIX_REDIS_MIN_REPLICAS)"
        )


def fetch_job(redis: Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def report_job_end(
    redis: Redis,
    settings: Settings,
    job: Job,
    status: JobStatus,
    *,
    error: str | None,
    result: dict[str, Any] | None,
    duration_s: float,
) -> bool:
    """Count the job's end in the metrics and queue its webhook, if it has one, exactly
    once: the worker calls this when a job ends; for a job whose worker died, whoever
    fails it (the API's reaper, or a new worker's startup cleanup) calls it too. Returns
    whether this call was the one that reported."""
    ended = ENDED_KEY.format(job_id=job.id)
    if not redis.set(ended, rq_now().isoformat(), nx=True, ex=settings.result_ttl_s):
        return False
    job_type = type_name(job)
    waited = job.started_at - job.enqueued_at if job.started_at and job.enqueued_at else None
    waited_s = waited.total_seconds() if waited else 0.0
    record_job_end(redis, job_type, status.value, duration_s, waited_s)
    if url := job.meta.get("webhook"):
        payload = {
            "id": job.id,
            "type": job_type,
            "model": model_of_queue(job.origin),
            "status": status,
            "error": error,
            "result": result,
        }
        enqueue_delivery(redis, settings, url, payload)
    return True


def heartbeats_current(redis: Redis, settings: Settings, outage_ended_at: float | None) -> bool:
    """Whether running jobs' heartbeat deadlines can be trusted to tell dead workers: not
    before Redis has been up, and reachable (`outage_ended_at`, time.monotonic() of the
    last failed call), for one heartbeat TTL plus a worker's longest pause between Redis
    tries. During an outage no worker could beat, so every deadline passed (and keys with
    a TTL expired); a live worker beats again within that time once Redis is back."""
    grace_s = settings.worker_heartbeat_ttl_s + REDIS_BACKOFF_CAP_S
    if outage_ended_at is not None and time.monotonic() - outage_ended_at < grace_s:
        return False
    return int(redis.info("server")["uptime_in_seconds"]) >= grace_s


def ended_elsewhere(redis: Redis, job: Job) -> bool:
    """Whether the job a worker is still running was already ended by someone else: failed
    as abandoned (its heartbeat lapsed: the worker was stopped, frozen or cut off) and
    reported. That first end stands; the worker must not record a second one."""
    return bool(redis.exists(ENDED_KEY.format(job_id=job.id))) and (
        job.get_status(refresh=True) == RQStatus.FAILED
    )


def report_abandoned(redis: Redis, settings: Settings, job: Job) -> None:
    """Report the end of a job RQ failed because its worker died (AbandonedJobError), and
    wake its long polls. Webhook deliveries and jobs RQ will retry are not reported."""
    if job_type_of(job) is None or job.retries_left:
        return
    ran_s = (rq_now() - (job.started_at or rq_now())).total_seconds()  # until seen dead
    report_job_end(
        redis, settings, job, JobStatus.failed, error=WORKER_DIED, result=None, duration_s=ran_s
    )
    announce(redis, job.id)


def mark_canceled(redis: Redis, job: Job) -> None:
    """Move a job that stopped at a cancel request from RQ's failed registry to its
    canceled one, so RQ's own tools (rq info, dashboards) count it as the API does."""
    with redis.pipeline() as pipe:
        FailedJobRegistry(job.origin, connection=redis).remove(job, pipeline=pipe)
        CanceledJobRegistry(job.origin, connection=redis).add(job, pipeline=pipe)
        job.set_status(RQStatus.CANCELED, pipeline=pipe)
        pipe.execute()


def ended_at(redis: Redis, job: Job) -> datetime | None:
    """When the job ended: RQ's record, or for jobs RQ ended without one (canceled while
    queued, failed because their worker died) when their end was reported."""
    if job.ended_at is not None:
        return job.ended_at
    reported = redis.get(ENDED_KEY.format(job_id=job.id))
    return datetime.fromisoformat(reported.decode()) if reported else None


def cancel_requested(redis: Redis, job_id: str) -> bool:
    return bool(redis.exists(CANCEL_KEY.format(job_id=job_id)))


def request_cancel(redis: Redis, job_id: str, ttl_s: int) -> None:
    redis.set(CANCEL_KEY.format(job_id=job_id), 1, ex=ttl_s)


def append_partial_result(redis: Redis, job_id: str, images: list[dict], settings: Settings):
    """Publish finished images of a running job (one JSON entry each, in order)."""
    if images:
        key = PARTIAL_KEY.format(job_id=job_id)
        with redis.pipeline() as pipe:
            pipe.rpush(key, *(json.dumps(image) for image in images))
            pipe.expire(key, settings.result_ttl_s)
            announce(pipe, job_id)
            pipe.execute()


def partial_result(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """What a running mix job has finished so far, shaped like its final result."""
    images = [json.loads(raw) for raw in redis.lrange(PARTIAL_KEY.format(job_id=job_id), 0, -1)]
    if not images:
        return None
    return {"latents": [image["latent"] for image in images], "images": images, "partial": True}


def status_of(redis: Redis, job: Job) -> JobStatus:
    status = _FROM_RQ.get(job.get_status(refresh=False), JobStatus.queued)
    if status is JobStatus.failed and cancel_requested(redis, job.id):
        return JobStatus.canceled
    return status


@dataclass(frozen=True)
class JobView:
    """What the API shows of a job."""

    id: str
    type: str
    model: str | None
    status: JobStatus
    progress: dict[str, int]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result: dict[str, Any] | None


def view_job(redis: Redis, job: Job) -> JobView:
    status = status_of(redis, job)
    result = job.latest_result() if status.is_terminal() else None
    error = None
    if status is JobStatus.failed and result is not None and result.exc_string:
        error = _last_line(result.exc_string)
    elif status is JobStatus.canceled:
        error = "canceled"
    return JobView(
        id=job.id,
        type=type_name(job),
        model=model_of_queue(job.origin),
        status=status,
        progress=dict(job.meta.get("progress") or {"done": 0, "total": 0}),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=ended_at(redis, job) if status.is_terminal() else None,
        error=error,
        result=_result(redis, job, status, result),
    )


def _result(redis: Redis, job: Job, status: JobStatus, result) -> dict[str, Any] | None:
    """The return value of a succeeded job; otherwise what it finished before it ended."""
    if status is JobStatus.succeeded and result is not None:
        return result.return_value
    return partial_result(redis, job.id)


# Stopping a busy worker at its job's next diffusion step (`latentmix up` sends these, and the
# kernel sends INTERRUPT_REQUEUE when the launcher dies): the job is requeued for the next
# worker, or fails with STOPPED_BY_SHUTDOWN when the user asked to stop now.
INTERRUPT_REQUEUE = signal.SIGUSR1
INTERRUPT_FAIL = signal.SIGUSR2
STOPPED_BY_SHUTDOWN = "stopped by shutdown: the service was asked to stop now (a second Ctrl-C)"


def prepare_requeue(redis: Redis, job: Job) -> None:
    """Make an interrupted job start afresh when it runs again: no progress, no partial
    results, and a count of its interruptions in its meta."""
    job.meta["progress"] = {"done": 0, "total": 0}
    job.meta["interrupted"] = job.meta.get("interrupted", 0) + 1
    job.save_meta()
    redis.delete(PARTIAL_KEY.format(job_id=job.id))


def requeue_orphans(redis: Redis) -> list[str]:
    """Put the jobs that Redis still holds as running back at the front of their queues, for
    a Redis that no live worker uses (the embedded one, as `latentmix up` starts it: its
    last run's workers are gone). Returns their ids."""
    requeued = []
    for queue in Queue.all(connection=redis, serializer=JSONSerializer):
        if not queue.name.startswith(QUEUE_PREFIX):
            continue
        registry = StartedJobRegistry(queue.name, connection=redis, serializer=JSONSerializer)
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            redis.zrem(registry.key, f"{job_id}:{execution_id}")
            job = fetch_job(redis, job_id)
            if job is None or job.get_status() != RQStatus.STARTED:
                continue
            prepare_requeue(redis, job)
            job.started_at = None
            queue._enqueue_job(job, at_front=True)  # its dependencies were met when it started
            requeued.append(job_id)
    return requeued


WORKER_DIED = (
    "worker died while running this job (its heartbeat stopped: killed, out of memory or "
    "lost); the job was not retried: submit it again"
)


def _last_line(traceback_text: str) -> str:
    """The exception line of a traceback: what a client can act on."""
    if "AbandonedJobError" in traceback_text:  # RQ's reaping of a dead worker's job
        return WORKER_DIED
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else traceback_text
