"""`latentmix info`: what Redis knows about the service, read through RQ (JSON serializer):
the model queues with their job counts by status, and the live workers with their models.
Read only: RQ's registry counts would first run RQ's cleanup (failing a dead worker's job
unreported); the reaper does that, reporting it."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from latentmix.service.core.jobs import QUEUE_PREFIX, model_of_queue, running_count

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
    workers = Worker.all(connection=redis)
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
                "state": str(worker.state),
                "models": [m for m in map(model_of_queue, worker.queue_names()) if m],
                "current_job": worker.get_current_job_id(),
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
            }
            for worker in sorted(workers, key=lambda w: w.name)
        ],
    }


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
