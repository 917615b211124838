"""The RQ dashboard of docker-compose.yml shows LatentMix's jobs.

The compose service runs the Dockerfile's `rq-dashboard` target: the same pinned packages
as the dev extra here. This starts that image's command from pip, with the compose service's
environment (its Redis URL swapped for the test server's), against a job enqueued with RQ's
JSON serializer as the API does, and reads the dashboard's job list.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from helpers import free_port
from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from latentmix.service.cli.stack import Child

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "latentmix:tiny"


def dashboard_service() -> dict:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return compose["services"]["rq-dashboard"]


def dashboard_stage() -> tuple[list[str], str]:
    """The pinned pip installs of the Dockerfile's rq-dashboard build, and the image's CMD."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    build = text.split("AS rq-dashboard-build", 1)[1].split("FROM ", 1)[0]
    final = text.split("AS rq-dashboard\n", 1)[1].split("FROM ", 1)[0]
    pins = re.findall(r'"([\w-]+==[\w.]+)"', build)
    (cmd,) = re.findall(r"^CMD (.*)$", final, flags=re.MULTILINE)
    return pins, cmd


def test_compose_builds_the_dashboard_from_the_dockerfile_and_reads_json():
    service = dashboard_service()
    assert service["build"]["target"] == "rq-dashboard"
    assert str(service["environment"]["RQ_DASHBOARD_JSON"]).lower() == "true"


def test_the_dockerfile_pins_what_the_tests_run():
    pins, _ = dashboard_stage()
    pinned = dict(pin.split("==") for pin in pins)
    assert set(pinned) == {"rq-dashboard", "rq", "six"}
    assert importlib.metadata.version("rq-dashboard") == pinned["rq-dashboard"]
    for name in ("rq", "six"):  # the project allows newer releases; the same major here
        installed = importlib.metadata.version(name)
        assert installed.split(".")[0] == pinned[name].split(".")[0], (name, installed)


@pytest.fixture
def dashboard(own_redis_url: str, tmp_path: Path) -> Iterator[str]:
    """The compose service's command and environment, on the test Redis; its base URL."""
    _, cmd = dashboard_stage()
    program, *args = json.loads(cmd)
    assert program == "rq-dashboard"
    environment = {k: str(v) for k, v in dashboard_service()["environment"].items()}
    environment["RQ_DASHBOARD_REDIS_URL"] = own_redis_url
    port = free_port()
    argv = [sys.executable, "-m", "rq_dashboard", *args, "--bind", "127.0.0.1", "--port", str(port)]
    dashboard = Child("rq-dashboard", argv, {**os.environ, **environment}, tmp_path / "rqd.log")
    url = f"http://127.0.0.1:{port}"
    dashboard.start()
    try:
        dashboard.wait_http(url + "/", timeout=30)
        yield url
    finally:
        dashboard.stop(timeout=10)


def test_the_dashboard_shows_a_finished_latentmix_job(dashboard: str, own_redis_url: str):
    """A job as LatentMix leaves it: JSON-serialized, with meta (progress) and a result.
    Read with the pickle serializer, its result and meta make the dashboard answer 500."""
    redis = Redis.from_url(own_redis_url)
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    job = queue.enqueue("json.dumps", {"latents": ["a", "b"]}, meta={"progress": {"done": 2}})
    worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert worker.work(burst=True)
    finally:  # the worker installs its own
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    redis.close()

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"{dashboard}/0/data/{path}", timeout=10) as response:  # noqa: S310 (local test URL)
            assert response.status == 200
            return json.load(response)

    listing = get(f"jobs/{quote(QUEUE, safe='')}/finished/8/asc/1.json")
    assert [j["id"] for j in listing["jobs"]] == [job.id]
    info = get(f"job/{job.id}.json")
    assert info["status"] == "finished"
    assert json.loads(info["metadata"]) == {"progress": {"done": 2}}
    queues = {q["name"] for q in get("queues.json")["queues"]}
    assert QUEUE in queues
