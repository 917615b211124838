"""What an autoscaler reads, per model: jobs queued and jobs running, from `/metrics` and
`latentmix info`, against the raw Redis keys a KEDA redis trigger watches
(deploy/kubernetes: the list `rq:queue:<queue>` and the sorted set `rq:wip:<queue>`)."""

from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp

from latentmix.service.cli.info import service_info
from latentmix.service.core.jobs import get_queue
from latentmix.service.core.webhooks import DELIVER_TASK


def start(redis: Redis, queue: Queue, *, heartbeat_ttl_s: int):
    """Take the next job from `queue` as a worker does: pop it, record its execution in the
    started registry with a heartbeat deadline."""
    job, _ = Queue.dequeue_any([queue], None, connection=redis, serializer=JSONSerializer)
    job.set_status(RQStatus.STARTED)
    with redis.pipeline() as pipe:
        execution = Execution.create(job, ttl=heartbeat_ttl_s, pipeline=pipe, worker_name="w")
        pipe.execute()
    return job, execution


def gauges(client) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels["queue"]): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name in ("latentmix_queue_depth", "latentmix_jobs_running")
    }


def test_queued_and_running_jobs_per_model_as_the_scaler_sees_them(client, settings):
    redis = Redis.from_url(settings.redis_url)
    tiny, sd3 = get_queue(redis, "tiny"), get_queue(redis, "tiny-sd3")
    for queue, jobs in ((tiny, 5), (sd3, 1)):
        for _ in range(jobs):
            queue.enqueue(DELIVER_TASK, "http://example.invalid/", {})
    start(redis, tiny, heartbeat_ttl_s=30)  # a live worker's job
    _, dead = start(redis, tiny, heartbeat_ttl_s=30)
    # A worker that died: its heartbeat lapsed, the reaper has not failed its job yet.
    wip = "rq:wip:latentmix:tiny"
    redis.zadd(wip, {dead.composite_key: current_timestamp() - 100}, xx=True)

    # The keys a KEDA redis trigger reads (LLEN of the list, ZCARD of the sorted set).
    assert redis.llen("rq:queue:latentmix:tiny") == 3
    assert redis.zcard(wip) == 2
    assert gauges(client) == {
        ("latentmix_queue_depth", "latentmix:tiny"): 3,
        ("latentmix_jobs_running", "latentmix:tiny"): 1,
        ("latentmix_queue_depth", "latentmix:tiny-sd3"): 1,
        ("latentmix_jobs_running", "latentmix:tiny-sd3"): 0,
    }
    counts = {queue["model"]: queue["jobs"] for queue in service_info(redis)["queues"]}
    assert (counts["tiny"]["queued"], counts["tiny"]["running"]) == (3, 1)
    assert (counts["tiny-sd3"]["queued"], counts["tiny-sd3"]["running"]) == (1, 0)
    # Reading changed nothing: the dead worker's job is still there for the reaper to report.
    assert redis.zcard(wip) == 2
    assert counts["tiny"]["failed"] == 0
