"""The `latentmix` commands with real processes: `up` run as a terminal runs it (in a
process group of its own, which a Ctrl-C signals as a whole), `up` healing a worker that
died, and `info` reading a running service's queues and workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from helpers import (
    png_bytes,
    service_environment,
    start_process,
    stop_process,
    wait_for,
    wait_ready,
)
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from latentmix.service.cli.stack import EmbeddedRedis

pytestmark = pytest.mark.e2e

UP = ["-m", "latentmix.service.cli", "up"]
LONG_INVERSION = "100"  # DDIM steps: the job still runs when the signal comes


def invert(client: httpx.Client, seed: int, steps: str = "4") -> str:
    response = client.post(
        "/latents",
        files=[("images", (f"image{seed}.png", png_bytes(seed), "image/png"))],
        data={"inversion_steps": steps, "guidance_scale": "1"},
    )
    assert response.status_code == 202, response.text
    return response.json()["job"]["id"]


def wait_until_running(client: httpx.Client, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{job_id}").json()["progress"]["done"] < 1:
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(0.05)


def info(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-m", "latentmix.service.cli", "info", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout


def logged_at(log: str, pattern: str) -> datetime:
    """When the first line matching `pattern` was logged, by RQ ('2026-11-30 06:36:28,961 ...')
    or by Valkey ('19368:M 30 Nov 2026 06:36:29.895 * ...')."""
    for line in log.splitlines():
        if re.search(pattern, line):
            if stamp := re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line):
                return datetime.fromisoformat(f"{stamp[1]}.{stamp[2]}")
            stamp = re.match(r"\d+:\w (\d\d \w{3} \d{4} \d\d:\d\d:\d\d\.\d{3})", line)
            return datetime.strptime(stamp[1], "%d %b %Y %H:%M:%S.%f")
    raise AssertionError(f"nothing matches {pattern!r} in:\n{log[-3000:]}")


def test_ctrl_c_in_a_terminal_lets_the_running_job_finish_and_stops_redis_last(
    tmp_path, up_environment
):
    env = up_environment
    data_dir = Path(env["LATENTMIX_DATA_DIR"])
    base_url = f"http://127.0.0.1:{env['LATENTMIX_PORT']}"
    log = tmp_path / "up.log"
    # In a process group of its own, as a shell runs a foreground command.
    up = start_process(UP, env, log, new_session=True)
    try:
        wait_ready(base_url, timeout=120, processes=[up], logs=[log])
        with httpx.Client(base_url=base_url, timeout=60) as client:
            job_id = invert(client, seed=71, steps=LONG_INVERSION)
            wait_until_running(client, job_id)

        os.killpg(up.pid, signal.SIGINT)  # ^C: the terminal signals the whole group

        assert up.wait(timeout=120) == 0, log.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()

    logs = data_dir / "logs"
    worker_log = (logs / "worker.log").read_text()
    redis_log = (logs / "redis.log").read_text()
    assert "ConnectionError" not in worker_log, worker_log[-3000:]
    # Redis stopped after the worker had finished the job and exited.
    worker_stopped = logged_at(worker_log, "stopping on request")
    assert logged_at(redis_log, "User requested shutdown") >= worker_stopped, redis_log
    # The job's end is in Redis's append-only file: start it again and read it.
    redis = EmbeddedRedis(
        data_dir / "redis", int(env["LATENTMIX_EMBEDDED_REDIS_PORT"]), tmp_path / "r.log"
    )
    redis.start()
    try:
        with Redis.from_url(redis.url) as connection:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            assert job.get_status() == JobStatus.FINISHED, job.exc_info
    finally:
        redis.stop()


def test_latentmix_up_starts_a_worker_again_when_it_dies(tmp_path, up_environment):
    env = up_environment
    base_url = f"http://127.0.0.1:{env['LATENTMIX_PORT']}"
    log = tmp_path / "up.log"
    up = start_process(UP, env, log)
    try:
        wait_ready(base_url, timeout=120, processes=[up], logs=[log])
        [worker] = json.loads(info(env, "--json"))["workers"]

        os.kill(worker["pid"], signal.SIGKILL)

        deadline = time.monotonic() + 60
        while "starting a new one" not in log.read_text():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert f"worker 0 exited with {-signal.SIGKILL}; starting a new one" in log.read_text()
        with httpx.Client(base_url=base_url, timeout=60) as client:
            assert wait_for(client, invert(client, seed=72))["status"] == "succeeded"
        pids = {w["pid"] for w in json.loads(info(env, "--json"))["workers"]}
        assert len(pids - {worker["pid"]}) == 1  # a new worker, registered
        assert up.poll() is None
    finally:
        assert stop_process(up, signal.SIGINT, timeout=120) == 0, log.read_text()


def test_info_shows_queues_workers_their_models_and_job_counts(service_stack):
    with httpx.Client(base_url=service_stack.api_url, timeout=60) as client:
        assert wait_for(client, invert(client, seed=73))["status"] == "succeeded"
    env = service_environment(REDIS_URL=service_stack.redis_url)

    shown = json.loads(info(env, "--json"))
    text = info(env)

    [queue] = [queue for queue in shown["queues"] if queue["model"] == "tiny"]
    assert queue["name"] == "latentmix:tiny"
    assert set(queue["jobs"]) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "deferred",
        "scheduled",
    }
    assert queue["jobs"]["succeeded"] >= 1
    [worker] = shown["workers"]
    assert worker["pid"] == service_stack.workers[0].pid
    assert worker["models"] == ["tiny"] and worker["successful_jobs"] >= 1
    assert f"Redis  {service_stack.redis_url}" in text
    assert "latentmix:tiny  queued" in text
    assert f"pid {worker['pid']}" in text and "model tiny" in text
