"""The reaper: jobs whose worker died end `failed` within a bounded time.

A worker keeps the entry of the job it runs alive in RQ's StartedJobRegistry with a short
heartbeat (`LATENTMIX_WORKER_HEARTBEAT_TTL_S`, worker/runtime.py). When the worker is
killed the entry expires; every `LATENTMIX_REAPER_INTERVAL_S` the API runs RQ's registry
maintenance on each LatentMix queue, which moves such jobs to `failed` (AbandonedJobError,
shown as "worker died"; no retry), enqueues their dependents (a mix waiting on a dead
inversion then fails naming it) and drops dead workers from the worker registry. It also
enqueues retries that have come due (webhook deliveries backing off), since the GPU workers
run no RQ scheduler (it would fork them after torch is loaded).

So a killed worker's job is `failed` at most heartbeat TTL + reaper interval (+ one
Redis round trip) after the kill: 40 s with the defaults. After a Redis outage (Redis
restarted, or unreachable from the reaper) no heartbeat is judged for one heartbeat TTL:
no worker could beat while Redis was away, so every running job's deadline has passed,
and live workers renew theirs within a third of the TTL once Redis is back.

The reaper then does what the dead worker could not: it counts the job's end in the
metrics, queues its webhook and wakes the job's long polls. A new worker's startup cleanup
may fail the job first; it reports it the same way (worker/runtime.py), and
`report_job_end` makes sure only one of them counts it. A worker that was only frozen or cut
off, and finishes a job after it was failed, records nothing: the first end stands. With
several API processes, a Redis lock lets one of them do each round.
"""

import asyncio
import logging
import time

from fastapi.concurrency import run_in_threadpool
from redis import Redis
from rq import Queue, worker_registration
from rq.job import Job
from rq.registry import clean_registries
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from latentmix.service.api.problems import REDIS_ERRORS
from latentmix.service.core.config import Settings
from latentmix.service.core.jobs import LatentMixJob, heartbeats_current, report_abandoned

LATENTMIX_QUEUES = "latentmix"  # model queues (`latentmix:<model>`) and auxiliary ones
LOCK_KEY = "latentmix:reaper-lock"

log = logging.getLogger("latentmix.reaper")


def reap(redis: Redis, settings: Settings, outage_ended_at: float | None = None) -> int:
    """One maintenance round over every LatentMix queue; returns the queues cleaned (none
    while heartbeats cannot be judged yet, after a Redis outage)."""
    queues = [
        queue
        for queue in Queue.all(connection=redis, job_class=LatentMixJob, serializer=JSONSerializer)
        if queue.name.startswith(LATENTMIX_QUEUES)
    ]
    _enqueue_due_retries(redis, [queue.name for queue in queues])
    if not heartbeats_current(redis, settings, outage_ended_at):
        return 0
    abandoned: list[Job] = []
    for queue in queues:
        # RQ calls the handlers for each job of a dead worker, then fails (or retries) it.
        clean_registries(queue, exception_handlers=[lambda job, *_: abandoned.append(job)])
        worker_registration.clean_worker_registry(queue)
    for job in abandoned:
        report_abandoned(redis, settings, job)
    return len(queues)


def _enqueue_due_retries(redis: Redis, queue_names: list[str]) -> None:
    """Move jobs whose retry time has come (webhook deliveries backing off) back to their
    queues: the scheduler's work, done here because the GPU workers run no scheduler."""
    scheduler = RQScheduler(queue_names, connection=redis, serializer=JSONSerializer)
    scheduler.prepare_registries(queue_names)
    scheduler.enqueue_scheduled_jobs()


async def run_reaper(redis: Redis, settings: Settings) -> None:
    """Reap every `reaper_interval_s` until cancelled; Redis outages are waited out."""
    interval_s = settings.reaper_interval_s
    lock_ttl_ms = max(1, int(interval_s * 1000) - 50)
    outage_ended_at: float | None = None  # the last round that found Redis away
    while True:
        try:
            if await run_in_threadpool(redis.set, LOCK_KEY, 1, nx=True, px=lock_ttl_ms):
                await run_in_threadpool(reap, redis, settings, outage_ended_at)
        except REDIS_ERRORS as exc:
            outage_ended_at = time.monotonic()
            log.warning("reaper: Redis unavailable (%s); retrying", exc)
        except Exception:
            log.exception("reaper round failed")
        await asyncio.sleep(interval_s)
