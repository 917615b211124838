"""The worker process's bookkeeping, without a model: a dead worker's job is reported
exactly once, whoever fails it first."""

import os
import signal
import time

import pytest
import torch
from helpers import TINY_CARD
from redis import Redis
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.worker import DequeueStrategy, Worker

from latentmix.service.api.reaper import reap
from latentmix.service.core.config import Settings
from latentmix.service.core.contract import MEASURE, MIX, MeasureRequest, plan_mix
from latentmix.service.core.job_metrics import JOBS_KEY
from latentmix.service.core.jobs import (
    DELIVER_TASK,
    WORKER_DIED,
    LatentMixJob,
    background_queue,
    enqueue,
    get_queue,
    heartbeats_current,
    view_job,
)
from latentmix.service.core.webhooks import webhook_queue
from latentmix.worker.runtime import Heartbeat, LatentMixWorker

IDS = [f"{i:032x}" for i in range(2)]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    settings = Settings(redis_url=redis_url, model="tiny", worker_heartbeat_ttl_s=3)
    # Heartbeats are judged only once Redis has been up for a heartbeat TTL plus a worker's
    # longest Redis backoff (a freshly started test server has not).
    with Redis.from_url(redis_url) as redis:
        while not heartbeats_current(redis, settings, None):
            time.sleep(0.5)
    return settings


@pytest.fixture
def redis(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url)


def abandoned_job(redis: Redis, settings: Settings):
    """A mix job that a worker started and then died on: its heartbeat entry expired."""
    request = plan_mix(
        latents=IDS, rows=[[1, 1]], method="lerp", prompt="", steps=2, guidance_scale=1.0
    )
    job = enqueue(redis, settings, job_type=MIX, model="tiny", request=request, job_id="a" * 32)
    get_queue(redis, "tiny").remove(job)
    job.set_status(RQStatus.STARTED)
    registry = StartedJobRegistry(job.origin, connection=redis, job_class=LatentMixJob)
    redis.zadd(registry.key, {f"{job.id}:dead-execution": 1})  # expired long ago
    return job


def make_worker(cls, queues, redis: Redis, settings: Settings, **kwargs) -> LatentMixWorker:
    """A worker of `cls` on `queues`, without a model (its jobs are never run by a model)."""
    return cls(
        queues,
        connection=redis,
        job_class=LatentMixJob,
        serializer=queues[0].serializer,
        settings=settings,
        device=torch.device("cpu"),
        **kwargs,
    )


def work(worker: LatentMixWorker, **kwargs) -> None:
    """`worker.work(**kwargs)` in this process, its signal handlers put back afterwards."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.work(**kwargs)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def failed_mixes(redis: Redis) -> int:
    return int(redis.hget(JOBS_KEY, "mix|failed") or 0)


def new_worker(redis: Redis, settings: Settings) -> LatentMixWorker:
    return make_worker(LatentMixWorker, [get_queue(redis, "tiny")], redis, settings)


def test_a_new_workers_cleanup_reports_a_dead_workers_job_once(redis, settings):
    job = abandoned_job(redis, settings)

    new_worker(redis, settings).clean_registries()  # at its start, before the reaper
    reap(redis, settings)  # the reaper comes too late: the job has been failed already

    assert failed_mixes(redis) == 1
    view = view_job(redis, LatentMixJob.fetch(job.id, connection=redis, serializer=job.serializer))
    assert view.status == "failed" and view.error == WORKER_DIED
    assert view.finished_at is not None


def test_the_reaper_reports_a_dead_workers_job_once(redis, settings):
    abandoned_job(redis, settings)

    reap(redis, settings)
    new_worker(redis, settings).clean_registries()
    reap(redis, settings)

    assert failed_mixes(redis) == 1


def test_the_worker_loads_its_model_with_the_t5_setting(settings, monkeypatch, tmp_path):
    """LATENTMIX_T5=false reaches load_model: an SD 3 worker then loads without T5."""
    from latentmix.worker import runtime

    seen = {}

    def load_model(name, **options):
        seen.update(options, name=name)
        raise RuntimeError("stop here: the options are what this test reads")

    monkeypatch.setattr(runtime, "load_model", load_model)
    without_t5 = settings.model_copy(
        update={"t5": False, "model": "tiny-sd3", "data_dir": tmp_path}
    )
    with pytest.raises(RuntimeError, match="stop here"):
        runtime.start(without_t5)
    assert seen["name"] == "tiny-sd3" and seen["t5"] is False


def test_a_stop_landing_just_after_the_pop_lets_the_popped_job_run(redis, settings):
    """SIGTERM in the instant between RQ's pop (the job left its queue) and the job's start:
    RQ's own warm shutdown raised into the idle worker there and the job was lost, in no
    queue and no registry. Here the popped job runs, then the worker stops."""
    request = plan_mix(
        latents=IDS, rows=[[1, 1]], method="lerp", prompt="", steps=2, guidance_scale=1.0
    )
    job = enqueue(redis, settings, job_type=MIX, model="tiny", request=request, job_id="b" * 32)
    queue = get_queue(redis, "tiny")

    class SignalledAfterThePop(type(queue)):
        @classmethod
        def dequeue_any(cls, *args, **kwargs):
            popped = super().dequeue_any(*args, **kwargs)
            if popped is not None:
                os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns
            return popped

    ran = []

    class RecordingWorker(LatentMixWorker):
        def execute_job(self, job, queue):
            ran.append(job.id)

    signalled = SignalledAfterThePop(
        queue.name, connection=redis, job_class=LatentMixJob, serializer=queue.serializer
    )
    worker = make_worker(
        RecordingWorker, [signalled], redis, settings, queue_class=SignalledAfterThePop
    )
    work(worker, burst=False)

    assert ran == [job.id]
    assert worker._stop_requested


def test_an_idle_worker_stops_without_waiting_on_its_command_channel(
    redis: Redis, settings: Settings
):
    """RQ read the worker's command channel in 60 s turns and waited for the turn to end on
    exit: a burst worker with nothing to do took a minute to stop. Now it stops at once."""
    worker = make_worker(LatentMixWorker, [get_queue(redis, "tiny")], redis, settings)
    started = time.monotonic()
    work(worker, burst=True)
    # A hang check, not a speed test: RQ's own reading would hold it here for 60 s.
    assert time.monotonic() - started < 30
    assert not worker.pubsub_thread.is_alive()


def test_background_work_waits_until_no_request_is_queued(redis: Redis, settings: Settings):
    """A worker takes from its model's background queue (an inversion's sampled round
    trip) only when its other queues are empty, whatever RQ's round robin turned to."""
    measure = MeasureRequest(latents=[IDS[0]], sample_of=4)
    request = plan_mix(
        latents=IDS, rows=[[1, 1]], method="lerp", prompt="", steps=2, guidance_scale=1.0
    )
    background = enqueue(
        redis, settings, job_type=MEASURE, model="tiny", request=measure, job_id="c" * 32,
        background=True,
    )  # fmt: skip
    mixes = [
        enqueue(redis, settings, job_type=MIX, model="tiny", request=request, job_id=c * 32)
        for c in "de"
    ]
    webhook = webhook_queue(redis).enqueue(DELIVER_TASK, "http://x", {}, job_id="f" * 32)
    ran = []

    class RecordingWorker(LatentMixWorker):
        def execute_job(self, job, queue):
            ran.append(job.id)

    queues = [get_queue(redis, "tiny"), webhook_queue(redis), background_queue(redis, "tiny")]
    worker = make_worker(RecordingWorker, queues, redis, settings)
    work(worker, burst=True, dequeue_strategy=DequeueStrategy.ROUND_ROBIN)

    assert sorted(ran[:3]) == sorted([mixes[0].id, mixes[1].id, webhook.id])
    assert ran[3:] == [background.id]


def test_a_beat_registers_the_worker_again_after_redis_lost_it(redis: Redis, settings: Settings):
    """After a Redis that lost its data, RQ's own heartbeat writes the worker's hash back
    (its last beat only) but not its entry in the workers set; our beat must still see the
    worker as lost and register it whole, or `latentmix info` never lists it again."""
    worker = new_worker(redis, settings)
    worker.register_birth()
    redis.flushall()
    worker.heartbeat()  # RQ's beat, which may come first

    Heartbeat(worker, ttl_s=3, card=TINY_CARD).beat()

    [found] = Worker.all(connection=redis)
    assert found.name == worker.name
    assert found.queue_names() == ["latentmix:tiny"]
    assert redis.ttl(worker.key) <= 3


def test_with_batching_jobs_run_in_flight_together_and_other_work_waits_for_them(
    redis: Redis, settings: Settings
):
    """Batching on: the worker starts mix jobs without waiting for them to end (up to its
    room), and runs any other job alone, once they have ended (it uses the model too)."""
    request = plan_mix(
        latents=IDS, rows=[[1, 1]], method="lerp", prompt="", steps=2, guidance_scale=1.0
    )
    mixes = [
        enqueue(redis, settings, job_type=MIX, model="tiny", request=request, job_id=c * 32)
        for c in "ab"
    ]
    measure = MeasureRequest(latents=[IDS[0]], sample_of=4)
    other = enqueue(
        redis, settings, job_type=MEASURE, model="tiny", request=measure, job_id="c" * 32
    )
    spans: dict[str, list[float]] = {}

    class TimingWorker(LatentMixWorker):
        def _execute_one(self, job, queue):
            spans[job.id] = [time.monotonic()]
            time.sleep(0.3)
            spans[job.id].append(time.monotonic())

    batching = settings.model_copy(update={"worker_batch_wait_ms": 1.0})
    worker = make_worker(TimingWorker, [get_queue(redis, "tiny")], redis, batching, batch_rows=4)
    work(worker, burst=True)

    (a_start, a_end), (b_start, b_end) = (spans[job.id] for job in mixes)
    assert b_start < a_end and a_start < b_end  # in flight together
    assert spans[other.id][0] >= max(a_end, b_end)  # alone, after them
