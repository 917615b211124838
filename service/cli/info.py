"""`latentmix info`: what Redis knows about the service, read through RQ (JSON serializer):
the model queues with their job counts by status, and the live workers with their models
and current jobs.
Read only: RQ's registry counts would first run RQ's cleanup (failing a dead worker's job
unreported); the reaper does that, reporting it."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from latentmix.service.core.jobs import (
    QUEUE_PREFIX,
    fetch_job,
    model_of_queue,
    running_count,
    type_name,
)
from latentmix.service.core.model_cards import serving_workers

# RQ's registries, named as the API names the job statuses (`GET /jobs/{id}`); running
# jobs are counted apart (`running_count`).
_REGISTRIES = {
    "succeeded": "finished_job_registry",
    "failed": "failed_job_registry",
    "canceled": "canceled_job_registry",
    "deferred": "deferred_job_registry",
    "scheduled": "scheduled_job_registry",
}


def service_info(redis: Redis) -> dict[str, Any]:
    """Queues (one per model) with job counts by status, and the registered workers."""
    names = {
        queue.name
        for queue in Queue.all(connection=redis, serializer=JSONSerializer)
        if queue.name.startswith(QUEUE_PREFIX)
    }
    # Only live workers (their serving key, renewed at each heartbeat): RQ's registry keeps
    # a killed worker for up to a heartbeat TTL, or, after a Redis restart, has none yet.
    serving = serving_workers(redis)
    workers = [worker for worker in Worker.all(connection=redis) if worker.name in serving]
    names |= {name for worker in workers for name in worker.queue_names() if model_of_queue(name)}
    queues = []
    for name in sorted(names):
        queue = Queue(name, connection=redis, serializer=JSONSerializer)
        counts = {"queued": queue.count, "running": running_count(queue)}
        for status, registry in _REGISTRIES.items():
            counts[status] = getattr(queue, registry).get_job_count(cleanup=False)
        queues.append({"name": name, "model": model_of_queue(name), "jobs": counts})
    return {
        "queues": queues,
        "workers": [
            {
                "name": worker.name,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "state": str(worker.get_state()),
                "models": [m for m in map(model_of_queue, worker.queue_names()) if m],
                "current_job": _current_job(worker),
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
            }
            for worker in sorted(workers, key=lambda w: w.name)
        ],
    }


def _current_job(worker: Worker) -> str | None:
    """The job the worker runs, from its executions in Redis (RQ's get_current_job_id
    reads the worker object's own memory: None for another process's worker)."""
    executions = worker.get_current_executions()
    return executions[0].job_id if executions else None


def running_jobs(redis: Redis) -> list[dict[str, Any]]:
    """The jobs Redis holds as running, with their type, model and progress."""
    running = []
    for queue in Queue.all(connection=redis, serializer=JSONSerializer):
        if not queue.name.startswith(QUEUE_PREFIX):
            continue
        for job_id in queue.started_job_registry.get_job_ids(cleanup=False):
            if (job := fetch_job(redis, job_id)) is None:
                continue
            progress = job.meta.get("progress") or {"done": 0, "total": 0}
            running.append(
                {"id": job.id, "type": type_name(job), "model": model_of_queue(queue.name)}
                | {"done": progress["done"], "total": progress["total"]}
            )
    return running


def describe_job(job: dict[str, Any]) -> str:
    """'invert 1a2b3c4d (tiny) 40/100'."""
    return f"{job['type']} {job['id'][:8]} ({job['model']}) {job['done']}/{job['total']}"


def format_info(info: dict[str, Any], redis_url: str) -> str:
    lines = [f"Redis  {redis_url}", "", "queues"]
    if not info["queues"]:
        lines.append("  (none yet: no job was queued and no worker is registered)")
    for queue in info["queues"]:
        counts = "  ".join(f"{status} {count}" for status, count in queue["jobs"].items())
        lines.append(f"  {queue['name']}  {counts}")
    lines += ["", "workers"]
    if not info["workers"]:
        lines.append("  (none registered)")
    for worker in info["workers"]:
        job = f"  job {worker['current_job']}" if worker["current_job"] else ""
        lines.append(
            f"  {worker['name']}  pid {worker['pid']} on {worker['hostname']}  "
            f"{worker['state']}  model {', '.join(worker['models']) or '-'}  "
            f"done {worker['successful_jobs']}, failed {worker['failed_jobs']}{job}"
        )
    return "\n".join(lines)
