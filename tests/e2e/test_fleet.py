"""A fleet on one machine, as deploy/kubernetes runs it: two API processes, one shared Redis
and one S3 endpoint (moto), workers of two models (`tiny`, `tiny-sd3`) that leave and join
while load runs, as nodes and an autoscaler make them:

- a lost node: the busy `tiny` worker is SIGKILLed; the reaper ends its job, the model's
  other jobs wait;
- scale-up: a worker per model joins and takes work as soon as its model is loaded;
- scale-down: SIGTERM (what the manifests' preStop sends) to a busy worker, which finishes
  its job and takes no other; then, every job ended, to the last `tiny-sd3` worker, idle,
  which exits (the model scaled to zero).

Every accepted job ends once: its final state is terminal, its webhook arrives once, and the
finished-jobs metric counts it once; nothing stays queued or running. The figures (jobs,
joins, leaves, time to take work) are printed (`pytest -s`) for the deployment guide.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from helpers import (
    S3_TEST_CREDENTIALS,
    WEBHOOK_SECRET,
    free_port,
    make_s3_storage,
    png_bytes,
    service_environment,
    start_moto,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Worker
from rq.job import Job

from latentmix.service.cli.stack import API_COMMAND, Child, ServiceStack
from latentmix.service.core.config import Settings
from latentmix.service.core.jobs import WORKER_DIED, get_queue, running_count

pytestmark = pytest.mark.e2e

MODELS = ("tiny", "tiny-sd3")
HEARTBEAT_TTL_S = 3
REAPER_INTERVAL_S = 1.0
STEPS = 25  # inversion steps: a job runs about a second on a shared 2-core machine
IN_FLIGHT = 3  # jobs the load keeps outstanding per model
TAKE_WORK_S = 5  # a loaded worker takes a waiting job within this
MIN_JOBS = 24
# A worker exits within this of its last job (or of SIGTERM when idle). RQ 3.0's teardown
# joins its pub/sub thread, which redis-py 8.2 leaves waiting up to RQ's 60 s poll once
# unsubscribed: most exits take under 10 s, some about a minute.
EXIT_S = 90


@dataclass
class Load:
    """Clients that keep IN_FLIGHT jobs outstanding per model, alternating the two APIs,
    each job with a webhook; records every accepted job."""

    apis: list[httpx.Client]
    hook_url: str
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> model
    paused: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    error: BaseException | None = None  # what stopped the load early

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        turn = itertools.cycle(self.apis)
        while not self.stop.is_set():
            for model in MODELS:
                with self.lock:
                    if model not in self.paused and self.outstanding(next(turn), model) < IN_FLIGHT:
                        self.submit(next(turn), model)
            time.sleep(0.1)

    def pause(self, *models: str) -> None:
        """No more jobs for `models` from now on (none is being submitted when it returns)."""
        with self.lock:
            self.paused.update(models)

    def resume(self, model: str) -> None:
        with self.lock:
            self.paused.discard(model)

    def outstanding(self, api: httpx.Client, model: str) -> int:
        counts = {q["model"]: q for q in scrape_queues(api)}
        return counts.get(model, {}).get("queued", 0) + counts.get(model, {}).get("running", 0)

    def submit(self, api: httpx.Client, model: str) -> None:
        seed = next(self.seeds)
        response = api.post(
            "/latents",
            files=[("images", (f"{seed}.png", png_bytes(seed), "image/png"))],
            data={
                "model": model,
                "inversion_steps": str(STEPS),
                "guidance_scale": "1",
                "webhook": self.hook_url,
            },
        )
        assert response.status_code == 202, response.text
        self.accepted[response.json()["job"]["id"]] = model


def scrape_queues(api: httpx.Client) -> list[dict]:
    """Queued and running jobs per model, from /metrics (what an autoscaler reads)."""
    gauges: dict[str, dict] = {}
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            names = {"latentmix_queue_depth": "queued", "latentmix_jobs_running": "running"}
            if sample.name in names:
                model = sample.labels["queue"].removeprefix("latentmix:")
                gauges.setdefault(model, {"model": model})[names[sample.name]] = sample.value
    return list(gauges.values())


class Fleet(ServiceStack):
    """Embedded Redis, moto S3, one worker per model, and two APIs on the same Redis."""

    def __init__(self, root: Path):
        self.s3_port = free_port()
        self.s3: Child | None = None
        self.second_api: Child | None = None
        self.root = root
        settings = Settings(
            model=MODELS[0],
            data_dir=root / "data",
            port=free_port(),
            embedded_redis_port=free_port(),
            s3_bucket=f"fleet-{uuid.uuid4().hex[:12]}",
            s3_endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            s3_access_key_id=S3_TEST_CREDENTIALS["access_key_id"],
            s3_secret_access_key=S3_TEST_CREDENTIALS["secret_access_key"],
            worker_heartbeat_ttl_s=HEARTBEAT_TTL_S,
            reaper_interval_s=REAPER_INTERVAL_S,
            webhook_secret=WEBHOOK_SECRET,
        )
        super().__init__(settings, models=MODELS, env=service_environment(), log_dir=root)
        self.second_api_url = f"http://127.0.0.1:{free_port()}"

    def start(self, ready_timeout: float | None = 120) -> Fleet:
        self.s3 = start_moto(self.s3_port, self.root / "moto.log")
        make_s3_storage(self.settings.s3_endpoint_url, bucket=self.settings.s3_bucket)
        super().start(ready_timeout)
        port = self.second_api_url.rsplit(":", 1)[1]
        env = self.environment(LATENTMIX_PORT=port)
        argv = [sys.executable, *API_COMMAND]
        self.second_api = Child("api 2", argv, env, self.root / "api-2.log").start()
        self.second_api.wait_http(f"{self.second_api_url}/healthz", timeout=60)
        return self

    def stop(self) -> None:
        if self.second_api is not None:
            self.second_api.stop(15)
        super().stop()
        if self.s3 is not None:
            self.s3.stop(timeout=30)

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)

    def registration(self, child: Child) -> Worker | None:
        """The RQ worker registration of a worker process (None until its model is loaded
        and it serves its queue)."""
        return next((w for w in Worker.all(connection=self.redis()) if w.pid == child.pid), None)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, service_data_dir: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    # The session's model cache: the test models are built once.
    (service_data_dir / "models").mkdir(exist_ok=True)
    fleet.settings.data_dir.mkdir(parents=True)
    (fleet.settings.data_dir / "models").symlink_to(service_data_dir / "models")
    try:
        yield fleet.start()
    finally:
        fleet.stop()


def until(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(step)
    return value


def current_job(fleet: Fleet, child: Child) -> str | None:
    worker = fleet.registration(child)
    return worker.get_current_job_id() if worker else None


def jobs_by(fleet: Fleet, worker_name: str, job_ids) -> list[Job]:
    jobs = Job.fetch_many(list(job_ids), connection=fleet.redis())
    return [job for job in jobs if job is not None and job.worker_name == worker_name]


def quiet(fleet: Fleet, load: Load, hook) -> bool:
    """Every accepted job has ended and its webhook arrived: no job or delivery is anywhere
    between RQ's pop from a queue and its entry in the started registry (an empty queue and
    started registry do not rule that out; the worker runs a job popped as a SIGTERM lands,
    tests/worker/test_runtime.py)."""
    jobs = Job.fetch_many(list(load.accepted), connection=fleet.redis())
    ended = all(job.get_status(refresh=False) in ("finished", "failed") for job in jobs)
    return ended and len(hook.deliveries) >= len(jobs)


def finished_total(api: httpx.Client) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(api.get("/metrics").text)
        for sample in family.samples
        if sample.name == "latentmix_jobs_finished_total" and sample.labels["type"] == "invert"
    )


# Four worker processes start (torch and a test model each): a few minutes on a loaded
# 2-core machine, past the suite's 300 s default.
@pytest.mark.timeout(600)
def test_workers_join_and_leave_under_load_and_every_job_ends_once(fleet, receiver):
    hook_url, hook = receiver
    apis = [httpx.Client(base_url=url, timeout=60) for url in (fleet.api_url, fleet.second_api_url)]
    finished_before = finished_total(apis[0])
    load = Load(apis, hook_url)
    loader = threading.Thread(target=load.run, daemon=True)
    began = time.monotonic()
    loader.start()
    figures: dict[str, object] = {}
    try:
        until(lambda: len(load.accepted) >= 4, 30, "jobs accepted by both APIs")
        tiny, sd3 = fleet.workers

        # A lost node: SIGKILL the tiny worker mid-job. The reaper ends its job; the
        # model's other jobs wait for the next worker.
        killed_job = until(lambda: current_job(fleet, tiny), 60, "the tiny worker busy")
        tiny.kill()
        killed_at = time.monotonic()
        ended = wait_for(apis[1], killed_job, timeout=60)
        figures["SIGKILLed job ended after s"] = round(time.monotonic() - killed_at, 1)

        # Scale-up: a worker per model joins while their queues are busy.
        joined = [(model, fleet.add_worker(model), time.monotonic()) for model in MODELS]
        pickups = {}
        for model, child, started_at in joined:
            registered = until(lambda c=child: fleet.registration(c), 120, f"{model} worker up")
            loaded_at = time.monotonic()
            until(
                lambda w=registered: jobs_by(fleet, w.name, load.accepted),
                TAKE_WORK_S + 10,
                f"the new {model} worker takes a job",
            )
            pickups[model] = (loaded_at - started_at, time.monotonic() - loaded_at)
        figures["pickup (start->loaded s, loaded->first job s)"] = {
            model: (round(a, 1), round(b, 2)) for model, (a, b) in pickups.items()
        }
        assert all(after <= TAKE_WORK_S for _, after in pickups.values()), pickups
        _, sd3_joined, _ = joined[1]

        # Scale-down of a busy worker: SIGTERM; it finishes its job and takes no other.
        name = fleet.registration(sd3).name
        interrupted = until(lambda: current_job(fleet, sd3), 30, "the first sd3 worker busy")
        before = {job.id for job in jobs_by(fleet, name, load.accepted)}
        sd3.send(signal.SIGTERM)
        assert sd3.wait(timeout=EXIT_S) == 0, fleet.logs()
        done_by_it = jobs_by(fleet, name, load.accepted)
        assert {job.id for job in done_by_it} == before, "told to stop, it took another job"
        assert all(job.get_status() == "finished" for job in done_by_it)
        assert interrupted in before

        # Scale to zero: no more jobs for a moment, and tiny-sd3's for good. Once every
        # job and webhook has ended (the worker is idle: no job between RQ's pop from the
        # queue and its start, see `quiet`), SIGTERM the last tiny-sd3 worker: it exits.
        load.pause(*MODELS)
        until(lambda: quiet(fleet, load, hook), 120, "every job and webhook ended")
        sd3_joined.send(signal.SIGTERM)
        left_at = time.monotonic()
        assert sd3_joined.wait(timeout=EXIT_S) == 0, fleet.logs()
        figures["idle worker exit after SIGTERM s"] = round(time.monotonic() - left_at, 2)
        load.resume("tiny")
        until(lambda: len(load.accepted) >= MIN_JOBS, 90, f"{MIN_JOBS} jobs accepted")
    finally:
        load.stop.set()
        loader.join(timeout=30)
    assert load.error is None, load.error

    # Drain: every accepted job ends, once.
    finals = {job_id: wait_for(apis[0], job_id, timeout=120) for job_id in list(load.accepted)}
    statuses = Counter(job["status"] for job in finals.values())
    if ended["status"] == "failed":  # failed by the reaper, not requeued
        assert ended["error"] == WORKER_DIED, ended
        assert statuses == {"succeeded": len(finals) - 1, "failed": 1}, statuses
    else:  # requeued and finished by another worker
        assert statuses == {"succeeded": len(finals)}, statuses
    for model in MODELS:
        queue = get_queue(fleet.redis(), model)
        assert queue.count == 0 and running_count(queue) == 0
    until(lambda: len(hook.deliveries) >= len(finals), 60, "a webhook per job")
    time.sleep(1)  # a duplicate would arrive now
    delivered = Counter(json.loads(d["body"])["id"] for d in hook.deliveries)
    assert delivered == Counter(dict.fromkeys(finals, 1))
    for d in hook.deliveries:
        body = json.loads(d["body"])
        assert body["status"] == finals[body["id"]]["status"]
    assert finished_total(apis[1]) - finished_before == len(finals)
    figures |= {
        "jobs accepted (2 APIs)": len(finals),
        "by model": dict(Counter(load.accepted.values())),
        "statuses": dict(statuses),
        "joins": len(MODELS),
        "leaves (SIGKILL busy, SIGTERM busy, SIGTERM idle)": 3,
        "killed job": ended["status"],
        "wall s": round(time.monotonic() - began, 1),
    }
    print("\nfleet figures:", json.dumps(figures, indent=1))
