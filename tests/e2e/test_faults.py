"""Faults done for real: a worker killed with SIGKILL mid-job, the Redis server stopped and
restarted, the S3 server stopped, a torch error inside a job. Every job must end in a
terminal state with a reason, and the service must heal by itself.

The module runs its own ServiceStack (Redis with an append-only file, so it survives a
restart; the API under uvicorn; one worker) and its own moto S3 server, all as processes
it can stop.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import signal
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from botocore.exceptions import ClientError
from helpers import (
    S3_TEST_CREDENTIALS,
    WEBHOOK_SECRET,
    assert_problem,
    free_port,
    latent_file,
    make_s3_storage,
    png_bytes,
    service_environment,
    start_moto,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.client import PubSub
from rq import Queue
from rq.serializers import JSONSerializer

from latentmix.service.cli.info import service_info
from latentmix.service.cli.stack import Child, ServiceStack
from latentmix.service.core.config import Settings
from latentmix.service.core.contract import INVERT, MEASURE
from latentmix.service.core.ids import uploaded_latent_id
from latentmix.service.core.job_events import CHANNEL_PREFIX
from latentmix.service.core.storage import S3Storage

pytestmark = pytest.mark.e2e

HEARTBEAT_TTL_S = 3
REAPER_INTERVAL_S = 1.0
# The promise (service/api/reaper.py): failed within heartbeat TTL + reaper interval. The
# slack covers a busy 2-core CI machine and the polling below.
DEATH_BOUND_S = HEARTBEAT_TTL_S + REAPER_INTERVAL_S + 4
PRESIGN_EXPIRY_S = 120


class Stack(ServiceStack):
    """The service (embedded Redis with an append-only file, so it survives a restart; the
    API; one worker) and its own moto S3 server, as processes that tests stop and start."""

    def __init__(self, root: Path, **overrides):
        self.root = root
        self.s3_port = free_port()
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        self.bucket = f"faults-{uuid.uuid4().hex[:12]}"
        self.s3: Child | None = None
        settings = Settings(
            **{
                "model": "tiny",
                "data_dir": root / "data",
                "port": free_port(),
                "embedded_redis_port": free_port(),
                "s3_bucket": self.bucket,
                "s3_endpoint_url": self.s3_url,
                "s3_access_key_id": S3_TEST_CREDENTIALS["access_key_id"],
                "s3_secret_access_key": S3_TEST_CREDENTIALS["secret_access_key"],
                "worker_heartbeat_ttl_s": HEARTBEAT_TTL_S,
                "reaper_interval_s": REAPER_INTERVAL_S,
                "presign_expiry_s": PRESIGN_EXPIRY_S,
                "webhook_secret": WEBHOOK_SECRET,
            }
            | overrides
        )
        super().__init__(
            settings,
            env=service_environment(),
            log_dir=root,
            redis_config={"appendonly": "yes", "appendfsync": "always"},
        )

    @property
    def worker(self) -> subprocess.Popen:
        return self.workers[0].process

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)

    # S3: moto's server; a restart loses its objects, so the bucket is made again.

    def start_s3(self) -> None:
        self.s3 = start_moto(self.s3_port, self.root / "moto.log")
        make_s3_storage(self.s3_url, bucket=self.bucket)

    def stop_s3(self) -> None:
        self.s3.stop(timeout=30)

    def ensure_running(self) -> None:
        """Whatever a previous test stopped is started again."""
        self.start_redis()
        if not self.s3.running:
            self.start_s3()
        if not self.workers[0].running:
            self.start_worker()
        self.wait_ready(timeout=120)

    def stop(self) -> None:
        super().stop()
        if self.s3 is not None:
            self.s3.stop(timeout=30)


def started(stack: Stack) -> Iterator[Stack]:
    try:
        stack.start_s3()
        stack.start(ready_timeout=120)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    yield from started(Stack(tmp_path_factory.mktemp("faults")))


# Redis outages: a worker waits REDIS_OUTAGE_S (7.5 s of backoff: 0.5, 1, 2, 4 s) for Redis;
# the heartbeat TTL is long, so the reaper never takes a job that waits for Redis for dead.
REDIS_OUTAGE_S = 5


@pytest.fixture(scope="module")
def patient_stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("redis-outage")
    yield from started(Stack(root, worker_heartbeat_ttl_s=60, worker_redis_outage_s=REDIS_OUTAGE_S))


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    stack.ensure_running()
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


def invert(
    client: httpx.Client, seed: int, steps: int = 4, webhook: str | None = None
) -> tuple[list[str], dict]:
    form = {"inversion_steps": str(steps), "guidance_scale": "1"}
    response = client.post(
        "/latents",
        files=[("images", (f"image{seed}.png", png_bytes(seed), "image/png"))],
        data=form | ({"webhook": webhook} if webhook else {}),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    return [entry["id"] for entry in body["latents"]], body["job"]


def announced(events: PubSub, timeout: float) -> bool:
    """Whether a message (not a subscription confirmation) comes within `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = events.get_message(timeout=left)
        if message is not None and message["type"] == "message":
            return True
    return False


def jobs_finished(client: httpx.Client, job_type: str, status: str) -> float:
    """The `latentmix_jobs_finished` count of `/metrics` for this type and status."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.labels == {"type": job_type, "status": status}:
                return sample.value
    return 0.0


def wait_until_running(client: httpx.Client, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{job_id}").json()["progress"]["done"] < 1:
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(0.05)


# --- a job that raises ---------------------------------------------------------------------


def test_an_error_inside_a_task_fails_its_job_and_the_worker_takes_the_next_one(stack, api):
    worker_pid = stack.worker.pid
    queue = Queue("latentmix:tiny", connection=stack.redis(), serializer=JSONSerializer)
    item = {"upload_key": "uploads/vanished", "latent_id": "0" * 32, "prompt": ""}
    request = {"items": [item], "settings": {"steps": 2, "guidance_scale": 1.0, "size": 64}}
    broken = queue.enqueue(INVERT.task, request, job_id=uuid.uuid4().hex)

    failed = wait_for(api, broken.id)

    assert failed["status"] == "failed"
    assert "NotFound" in failed["error"] and "uploads/vanished" in failed["error"], failed
    assert_the_worker_goes_on(stack, api, worker_pid, seed=1)


def test_a_job_naming_another_function_is_refused_and_the_worker_goes_on(stack, api, tmp_path):
    worker_pid = stack.worker.pid
    queue = Queue("latentmix:tiny", connection=stack.redis(), serializer=JSONSerializer)
    target = tmp_path / "made-by-a-job"
    foreign = queue.enqueue("os.mkdir", str(target), job_id=uuid.uuid4().hex)

    failed = wait_for(api, foreign.id)

    assert failed["status"] == "failed"
    assert "'os.mkdir' is not a LatentMix task" in failed["error"], failed
    assert not target.exists()
    assert_the_worker_goes_on(stack, api, worker_pid, seed=3)


def assert_the_worker_goes_on(stack: Stack, api: httpx.Client, worker_pid: int, seed: int):
    _, job = invert(api, seed=seed)  # a new image: a job of its own
    assert wait_for(api, job["id"])["status"] == "succeeded"
    assert stack.worker.poll() is None and stack.worker.pid == worker_pid


def test_jobs_and_results_cross_redis_as_json_never_pickles(stack, api):
    ids, job = invert(api, seed=2)
    wait_for(api, job["id"])
    redis = stack.redis()

    payload = zlib.decompress(redis.hget(f"rq:job:{job['id']}", "data"))
    results = redis.xrange(f"rq:results:{job['id']}")

    assert json.loads(payload)[0] == INVERT.task
    assert results, "no result stored"
    assert len(ids) == 1  # one image: the sampled round trip is its own
    sampled = {"measure": "sample", "measured": ids, "of": 1}
    for _, fields in results:
        value = json.loads(base64.b64decode(fields[b"return_value"]))
        measuring = value["reconstruction"].pop("job")  # the sample's measure job
        assert value == {"latents": ids, "reconstruction": sampled}
        assert json.loads(zlib.decompress(redis.hget(f"rq:job:{measuring}", "data")))[0] == (
            MEASURE.task
        )
    assert not payload.startswith(b"\x80"), "a pickle"


# --- a worker killed mid-job ----------------------------------------------------------------


def test_a_killed_workers_job_fails_within_the_bound_and_queued_jobs_wait(stack, api, receiver):
    hook_url, hook = receiver
    latent_ids, running = invert(api, seed=11, steps=500, webhook=hook_url)
    _, queued = invert(api, seed=12)
    mix = api.post("/mix", json={"latents": latent_ids, "steps": 2}).json()
    wait_until_running(api, running["id"])
    failed_before = jobs_finished(api, "invert", "failed")
    events = stack.redis().pubsub()
    events.subscribe(CHANNEL_PREFIX + running["id"])

    stack.kill_worker()
    killed_at = time.monotonic()
    while (job := api.get(f"/jobs/{running['id']}").json())["status"] == "running":
        assert time.monotonic() - killed_at < DEATH_BOUND_S, f"still running: {job}"
        time.sleep(0.2)
    reaped_after = time.monotonic() - killed_at

    assert job["status"] == "failed", job
    assert "worker died" in job["error"]
    assert reaped_after < DEATH_BOUND_S
    # The reaper does what the dead worker could not: wake the long polls, count the end.
    assert announced(events, timeout=5), "no announcement of the job's end"
    assert jobs_finished(api, "invert", "failed") == failed_before + 1
    assert api.get(f"/jobs/{queued['id']}").json()["status"] == "queued"
    assert api.get(f"/latents/{latent_ids[0]}").json()["status"] == "failed"
    while api.get("/readyz").json()["workers"] > 0:
        assert time.monotonic() - killed_at < DEATH_BOUND_S, "the dead worker is still registered"
        time.sleep(0.2)

    stack.start_worker()
    assert wait_for(api, queued["id"])["status"] == "succeeded"
    mixed = wait_for(api, mix["id"])
    assert mixed["status"] == "failed" and latent_ids[0] in mixed["error"], mixed
    # ... and its webhook goes out (delivered by the next worker).
    deadline = time.monotonic() + 30
    while not hook.deliveries:
        assert time.monotonic() < deadline, "no webhook for the dead worker's job"
        time.sleep(0.1)
    payload = json.loads(hook.deliveries[0]["body"])
    assert payload["id"] == running["id"] and payload["type"] == "invert", payload
    assert payload["status"] == "failed" and "worker died" in payload["error"], payload
    again = api.post(
        "/latents",
        files=[("images", ("image11.png", png_bytes(11), "image/png"))],
        data={"inversion_steps": "500", "guidance_scale": "1"},
    )
    assert again.status_code == 202, "a failed latent can be requested again"
    api.post(f"/jobs/{again.json()['job']['id']}/cancel")


def test_sigterm_lets_the_running_job_finish_then_the_worker_exits(stack, api):
    _, running = invert(api, seed=13, steps=150)
    _, queued = invert(api, seed=14)
    wait_until_running(api, running["id"])

    stack.worker.send_signal(signal.SIGTERM)

    assert stack.worker.wait(timeout=120) == 0, stack.logs()
    assert api.get(f"/jobs/{running['id']}").json()["status"] == "succeeded"
    assert api.get(f"/jobs/{queued['id']}").json()["status"] == "queued"  # left for the next
    stack.start_worker()
    assert wait_for(api, queued["id"])["status"] == "succeeded"


# --- Redis stopped and started again --------------------------------------------------------


def test_without_redis_the_api_answers_503_and_heals_when_redis_is_back(stack, api):
    latent_ids, job = invert(api, seed=21)
    assert wait_for(api, job["id"])["status"] == "succeeded"

    stack.stop_redis()
    try:
        for response in (
            api.get(f"/jobs/{job['id']}"),
            api.post("/mix", json={"latents": latent_ids}),
            api.post("/mix", json={"latents": latent_ids}, headers={"Idempotency-Key": "k-1"}),
            api.get("/readyz"),
        ):
            assert response.status_code == 503, response.text
            if response.url.path != "/readyz":
                assert_problem(response, 503, "unavailable")
                assert int(response.headers["Retry-After"]) > 0
        assert api.get("/healthz").status_code == 200
    finally:
        stack.start_redis()

    deadline = time.monotonic() + 30
    while (response := api.get(f"/jobs/{job['id']}")).status_code == 503:
        assert time.monotonic() < deadline, "the API did not reconnect"
        time.sleep(0.2)
    assert response.json()["status"] == "succeeded", "the job did not survive the restart"
    mixed = api.post("/mix", json={"latents": latent_ids, "steps": 2})
    assert mixed.status_code == 202
    assert wait_for(api, mixed.json()["id"])["status"] == "succeeded", "the worker did not heal"


def test_a_busy_worker_rides_out_a_redis_restart(patient_stack):
    stack = patient_stack
    worker_pid = stack.worker.pid
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        _, job = invert(api, seed=26, steps=300)
        wait_until_running(api, job["id"])

        stack.stop_redis()  # away for a few seconds while the job computes
        time.sleep(2)
        stack.start_redis()

        done = wait_for(api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["done"] == done["progress"]["total"]
    assert stack.worker.poll() is None and stack.worker.pid == worker_pid
    assert "Traceback" not in (stack.root / "worker.log").read_text()


def test_a_job_that_redis_leaves_for_too_long_fails_naming_redis(patient_stack):
    stack = patient_stack
    worker_pid = stack.worker.pid
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        _, job = invert(api, seed=27, steps=500)
        wait_until_running(api, job["id"])
        stack.stop_redis()
        time.sleep(3 * REDIS_OUTAGE_S)  # well past the worker's patience
        stack.start_redis()

        failed = wait_for(api, job["id"])
        assert failed["status"] == "failed"
        assert "RedisUnavailable: Redis was unreachable for over 5 s" in failed["error"], failed
        assert failed["finished_at"] is not None
        assert stack.worker.poll() is None and stack.worker.pid == worker_pid
        _, next_job = invert(api, seed=28)
        assert wait_for(api, next_job["id"])["status"] == "succeeded", "the worker did not heal"


# --- one true end per job --------------------------------------------------------------------


def test_a_redis_outage_longer_than_the_heartbeat_ttl_reaps_no_live_workers_job(stack, api):
    _, job = invert(api, seed=51, steps=500)
    wait_until_running(api, job["id"])
    ended_before = {s: jobs_finished(api, "invert", s) for s in ("failed", "succeeded")}

    stack.stop_redis()  # no heartbeat can reach Redis: every deadline passes
    time.sleep(HEARTBEAT_TTL_S + 2)
    stack.start_redis()

    done = wait_for(api, job["id"])
    assert done["status"] == "succeeded", done  # never "worker died" in between
    assert jobs_finished(api, "invert", "failed") == ended_before["failed"]
    assert jobs_finished(api, "invert", "succeeded") == ended_before["succeeded"] + 1


def test_a_frozen_workers_job_failed_as_abandoned_keeps_that_one_end_when_it_finishes(stack, api):
    _, job = invert(api, seed=52, steps=500)
    wait_until_running(api, job["id"])
    ended_before = {s: jobs_finished(api, "invert", s) for s in ("failed", "succeeded")}

    stack.worker.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stops
    try:
        failed = wait_for(api, job["id"], timeout=DEATH_BOUND_S + 10)
    finally:
        stack.worker.send_signal(signal.SIGCONT)
    assert failed["status"] == "failed" and "worker died" in failed["error"], failed
    log = stack.root / "worker.log"
    deadline = time.monotonic() + 120
    while f"job {job['id']} ended here" not in log.read_text():  # it finished after all
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)

    after = api.get(f"/jobs/{job['id']}").json()
    assert (after["status"], after["error"]) == (failed["status"], failed["error"])  # the first
    assert jobs_finished(api, "invert", "failed") == ended_before["failed"] + 1
    assert jobs_finished(api, "invert", "succeeded") == ended_before["succeeded"]
    stack.kill_worker()  # the next test starts a fresh one


# --- readiness ------------------------------------------------------------------------------

BEAT_S = HEARTBEAT_TTL_S / 3  # a worker's heartbeat interval


def seconds_until(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def serving(stack: Stack) -> bool:
    """Whether the stack's current worker process is up and counted (not a dead one's key)."""
    return [w["pid"] for w in service_info(stack.redis())["workers"]] == [stack.worker.pid]


def test_readiness_and_info_follow_a_redis_that_lost_everything_and_a_killed_worker(stack, api):
    seconds_until(lambda: serving(stack), timeout=120)
    stack.redis().flushall()  # a Redis restarted without its data, or failed over to a blank one

    # The worker publishes itself again at its next beat.
    seconds_until(lambda: api.get("/readyz").status_code == 200, timeout=BEAT_S + 3)
    _, job = invert(api, seed=53, steps=500)
    wait_until_running(api, job["id"])
    [worker] = service_info(stack.redis())["workers"]
    assert worker["pid"] == stack.worker.pid and worker["current_job"] == job["id"], worker

    stack.kill_worker()  # stops counting once its serving key (two beats) runs out
    gone_after = seconds_until(lambda: api.get("/readyz").json()["workers"] == 0, timeout=10)
    assert gone_after < 2 * BEAT_S + 1.5, gone_after
    assert api.get("/readyz").status_code == 503
    assert service_info(stack.redis())["workers"] == []


# --- S3 stopped -----------------------------------------------------------------------------


def test_presigned_image_urls_expire_after_the_configured_time(stack, api):
    latent_ids, job = invert(api, seed=31)
    wait_for(api, job["id"])
    mixed = wait_for(api, api.post("/mix", json={"latents": latent_ids, "steps": 2}).json()["id"])

    redirect = api.get(mixed["result"]["images"][0]["url"])

    assert redirect.status_code == 307
    query = parse_qs(urlsplit(redirect.headers["location"]).query)
    assert query["X-Amz-Expires"] == [str(PRESIGN_EXPIRY_S)]
    assert httpx.get(redirect.headers["location"]).status_code == 200


def test_without_s3_the_api_answers_503_jobs_fail_clearly_and_all_heals(stack, api):
    ready_ids, job = invert(api, seed=41)
    assert wait_for(api, job["id"])["status"] == "succeeded"
    pending_ids, running = invert(api, seed=42, steps=40)
    wait_until_running(api, running["id"])

    stack.stop_s3()
    try:
        assert_problem(api.get(f"/latents/{ready_ids[0]}/data"), 503, "storage unavailable")
        failed = wait_for(api, running["id"])
        assert failed["status"] == "failed"
        assert "Could not connect to the endpoint" in failed["error"], failed
    finally:
        stack.start_s3()

    assert api.get(f"/latents/{pending_ids[0]}").json()["status"] == "failed"

    _, job = invert(api, seed=43)
    assert wait_for(api, job["id"])["status"] == "succeeded", "the worker did not heal"


S3_OUTAGE_S = 10


def test_s3_down_for_seconds_under_load_every_job_ends_clearly_and_all_heals(stack, api):
    """Inversions uploading and mixes storing images while S3 is away for S3_OUTAGE_S: each
    job succeeds or fails naming storage, a failed job's latents are never served, the API
    answers 503 with Retry-After meanwhile, and everything works again by itself after."""
    inputs = []
    for seed in (61, 62):
        ids, job = invert(api, seed=seed)
        assert wait_for(api, job["id"])["status"] == "succeeded"
        inputs += ids
    inverting = [invert(api, seed=63 + i, steps=20) for i in range(3)]
    mixing = [api.post("/mix", json={"latents": inputs, "steps": 20}).json() for _ in range(2)]
    wait_until_running(api, inverting[0][1]["id"])

    stack.stop_s3()
    try:
        during = api.get(f"/latents/{inputs[0]}/data")
        assert_problem(during, 503, "storage unavailable")
        assert int(during.headers["Retry-After"]) > 0
        assert api.get("/readyz").status_code == 503
        time.sleep(S3_OUTAGE_S)
    finally:
        stack.start_s3()  # moto starts empty: the bucket is made again

    for latent_ids, job in inverting:
        ended = wait_for(api, job["id"])
        if ended["status"] == "failed":
            assert "connect" in ended["error"].lower() or "storage" in ended["error"].lower()
            for latent_id in latent_ids:  # never half a latent
                assert api.get(f"/latents/{latent_id}").json()["status"] == "failed"
                assert api.get(f"/latents/{latent_id}/data").status_code != 200
        else:
            assert ended["status"] == "succeeded", ended
    for mix in mixing:
        ended = wait_for(api, mix["id"])
        assert ended["status"] in ("succeeded", "failed"), ended
        if ended["status"] == "failed":
            assert ended["error"], ended
    seconds_until(lambda: api.get("/readyz").status_code == 200, timeout=30)
    latent_ids, job = invert(api, seed=70)
    assert wait_for(api, job["id"])["status"] == "succeeded", "the worker did not heal"
    assert api.get(f"/latents/{latent_ids[0]}/data").status_code == 200


# --- S3 answering errors: retried with backoff, then a clear failure, never half a latent ----


class FlakyS3:
    """An HTTP proxy in front of the S3 server that answers 503 SlowDown to the requests
    `fails(method, path)` picks (budget permitting), and forwards everything else."""

    ERROR = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def __init__(self, target: str, fails, budget: float = float("inf")):
        self.target = urlsplit(target)
        self.fails = fails
        self.budget = budget
        self.seen: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = urlsplit(self.path).path
                if proxy.budget > 0 and proxy.fails(self.command, path):
                    proxy.budget -= 1
                    proxy.seen.append((self.command, path, 503))
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(FlakyS3.ERROR)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(FlakyS3.ERROR)
                    return
                upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                answer = upstream.getresponse()
                data = answer.read()
                proxy.seen.append((self.command, path, answer.status))
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_s3(s3_server):
    proxies = []

    def make(fails, budget=float("inf")) -> FlakyS3:
        proxies.append(FlakyS3(s3_server, fails, budget))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def test_transient_s3_errors_are_retried_with_backoff(s3_server, flaky_s3):
    bucket = make_s3_storage(s3_server).bucket
    proxy = flaky_s3(lambda method, path: True, budget=2)
    storage = S3Storage(bucket=bucket, endpoint_url=proxy.url, **S3_TEST_CREDENTIALS)

    storage.put("latents/x.safetensors", b"tensor", "application/octet-stream")

    assert [status for _, _, status in proxy.seen] == [503, 503, 200]
    assert storage.get("latents/x.safetensors") == b"tensor"


def test_a_persistent_s3_failure_is_an_error_after_a_bounded_number_of_tries(s3_server, flaky_s3):
    bucket = make_s3_storage(s3_server).bucket
    proxy = flaky_s3(lambda method, path: method == "PUT")
    storage = S3Storage(bucket=bucket, endpoint_url=proxy.url, **S3_TEST_CREDENTIALS)

    with pytest.raises(ClientError, match="SlowDown"):
        storage.put("latents/x.safetensors", b"tensor", "application/octet-stream")
    assert len(proxy.seen) == 3


def test_a_latent_whose_write_failed_is_never_served(s3_server, flaky_s3, make_client):
    """A latent and its record are one object: when its write fails, the upload is a 503
    and the latent does not exist for the API, in any part."""
    bucket = make_s3_storage(s3_server).bucket
    proxy = flaky_s3(lambda method, path: method == "PUT" and path.endswith(".safetensors"))
    client = make_client(
        s3_bucket=bucket,
        s3_endpoint_url=proxy.url,
        s3_access_key_id=S3_TEST_CREDENTIALS["access_key_id"],
        s3_secret_access_key=S3_TEST_CREDENTIALS["secret_access_key"],
    )
    array = np.random.default_rng(9).standard_normal((4, 8, 8)).astype(np.float32)
    latent_id = uploaded_latent_id(array, "tiny")

    response = client.post(
        "/latents",
        files=[("latents", ("z.safetensors", latent_file(array), "application/octet-stream"))],
    )

    assert_problem(response, 503, "storage unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert proxy.seen, "the write reached the store"
    written = make_s3_storage(s3_server, bucket=bucket)
    assert not written.exists(f"latents/{latent_id}.safetensors")
    assert_problem(client.get(f"/latents/{latent_id}"), 404, latent_id)
    assert_problem(client.get(f"/latents/{latent_id}/data"), 404, latent_id)
    assert_problem(client.post("/mix", json={"latents": [latent_id]}), 404, latent_id)


# --- a job that breaks the device: the worker stops for a fresh process ----------------------


@pytest.fixture
def runtime_worker(redis_server):
    import torch

    from latentmix.worker.runtime import LatentMixWorker

    redis = Redis.from_url(redis_server)
    queue = Queue("latentmix:tiny", connection=redis, serializer=JSONSerializer)
    return LatentMixWorker(
        [queue],
        connection=redis,
        serializer=JSONSerializer,
        settings=Settings(redis_url=redis_server, worker_heartbeat_ttl_s=30),
        device=torch.device("cpu"),
    )


def fail_job(worker, exc: BaseException) -> None:
    for handler in worker._exc_handlers:  # as RQ calls them after a job raised
        handler(SimpleNamespace(id="job"), type(exc), exc, None)


def test_a_worker_whose_device_broke_stops_after_recording_the_failure(runtime_worker, monkeypatch):
    from latentmix.worker import runtime

    monkeypatch.setattr(runtime, "device_works", lambda device: False)

    fail_job(runtime_worker, RuntimeError("CUDA error: device-side assert triggered"))

    assert runtime_worker.device_lost and runtime_worker._stop_requested


def test_out_of_memory_empties_the_cache_and_the_worker_goes_on(runtime_worker, monkeypatch):
    import torch

    from latentmix.worker import runtime

    emptied = []
    monkeypatch.setattr(runtime, "empty_device_cache", emptied.append)

    fail_job(runtime_worker, torch.OutOfMemoryError("CUDA out of memory"))

    assert emptied == [runtime_worker.device]
    assert not runtime_worker.device_lost and not runtime_worker._stop_requested


def test_an_ordinary_error_on_a_working_device_changes_nothing(runtime_worker):
    fail_job(runtime_worker, ValueError("bad input"))
    assert not runtime_worker.device_lost and not runtime_worker._stop_requested
    assert runtime_worker.get_heartbeat_ttl(SimpleNamespace(timeout=3600)) == 30
