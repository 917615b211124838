"""Helpers shared by fixtures and tests (tests/ is on sys.path via the rootdir conftest)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from latentmix.service.cli.stack import Child, StackError
from latentmix.service.core.config import Settings
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.storage import S3Storage

WEBHOOK_SECRET = "test-webhook-secret"  # LATENTMIX_WEBHOOK_SECRET of the session's service
S3_TEST_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


# The card a worker serving the built-in tiny model publishes on the CPU with the e2e
# session's batch sizes (tests/e2e/test_service.py checks it against a real worker's).
TINY_CARD = ModelCard(
    model="tiny",
    family="stable-diffusion",
    latent_channels=4,
    vae_scale_factor=8,
    default_size=64,
    default_guidance=7.5,
    prediction_type="epsilon",
    inversion_methods=("ddim", "fixed-point", "edict", "bdia", "negative-prompt", "null-text"),
    size_multiple=8,
    attention_interpolation=True,
    scheduler="DDIMScheduler",
    attention="AttnProcessor2_0",
    device="cpu",
    dtype="float32",
    max_batch_size=2,
    vae_batch_size=4,
    inversion_batch_size=2,
    compiled=False,
)


SENTINEL_MISSING = shutil.which("redis-sentinel") is None or shutil.which("redis-server") is None
# Tests that need Debian's redis-server and redis-sentinel skip without them, except in CI
# (.ci/run sets LATENTMIX_SENTINEL_TESTS=required): there they fail, never skip.
needs_sentinel = pytest.mark.skipif(
    SENTINEL_MISSING and os.environ.get("LATENTMIX_SENTINEL_TESTS") != "required",
    reason="needs Debian's redis-server and redis-sentinel (scripts/test installs them when it "
    "runs as root: scripts/install-redis-sentinel; or apt-get install -y redis-sentinel)",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(port: int, log: Path, timeout: float = 30) -> Child:
    """moto's S3 server on 127.0.0.1:`port` (a child in a session of its own), answering."""
    import sys

    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = Child("moto", argv, os.environ, log).start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}", timeout)
    except StackError:
        server.kill()
        raise
    return server


def make_s3_storage(endpoint_url: str, **overrides: object) -> S3Storage:
    """An S3Storage on a new, uniquely named bucket of the test server."""
    options: dict[str, object] = {
        "bucket": f"test-{uuid.uuid4().hex[:16]}",
        "endpoint_url": endpoint_url,
        "region": "us-east-1",
        "addressing_style": "path",
        **S3_TEST_CREDENTIALS,
        **overrides,
    }
    storage = S3Storage(**options)  # type: ignore[arg-type]
    storage.ensure_bucket()
    return storage


def png_bytes(seed: int, size: int = 64, image_format: str = "PNG") -> bytes:
    """The seeded test picture (latentmix.service.core.images.seeded_image), encoded."""
    import io

    from latentmix.service.core.images import seeded_image

    buffer = io.BytesIO()
    seeded_image(seed, size).save(buffer, format=image_format)
    return buffer.getvalue()


def latent_file(array, name: str = "latent") -> bytes:
    """A safetensors file holding `array` under `name`."""
    import numpy as np
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(array)})


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| of two tensors."""
    return float((actual - expected).norm() / expected.norm())


# --- processes of the service under test ------------------------------------------------------


def start_process(
    args: list[str], env: dict[str, str], log, *, new_session: bool = False
) -> subprocess.Popen:
    """`python ARGS` with its output appended to `log`; with `new_session`, in a session
    (and process group) of its own, as a terminal runs a command."""
    import sys

    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=out, start_new_session=new_session
        )


def stop_process(process: subprocess.Popen, sig=None, timeout: float = 60) -> int:
    """Signal (default SIGTERM) and wait; kill after `timeout`. Returns the exit code."""
    import signal

    if process.poll() is None:
        process.send_signal(sig or signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_ready(base_url: str, timeout: float, processes=(), logs=()) -> None:
    """Until GET /readyz answers 200 (Redis, storage and a worker up)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.2)
    raise RuntimeError("service not ready:\n" + "\n".join(log.read_text() for log in logs))


def wait_for(client, job_id: str, timeout: float = 120) -> dict:
    """Long-poll GET /jobs/{id} until the job ends; returns its final JSON."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", params={"wait": 10}).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise AssertionError(f"job {job_id} did not end within {timeout}s: {job}")


# --- the HTTP API as a client sees it -------------------------------------------------------

PROBLEM_JSON = "application/problem+json"


def assert_problem(response, status: int, *phrases: str) -> dict:
    """The response is an RFC 9457 problem with `status` whose detail names each phrase."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status
    for phrase in phrases:
        assert phrase in body["detail"], body
    return body


def upload_latent(client, array, name: str = "latent", model: str | None = None):
    """POST /latents with one safetensors file holding `array` under `name`."""
    return client.post(
        "/latents",
        files=[
            ("latents", ("z.safetensors", latent_file(array, name), "application/octet-stream"))
        ],
        data={"model": model} if model else {},
    )


def upload_random_latents(client, count: int, seed: int) -> list[str]:
    """Ids of `count` seeded random [4, 8, 8] latents stored through the API."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        upload_latent(client, rng.standard_normal((4, 8, 8)).astype(np.float32)).json()["latents"][
            0
        ]["id"]
        for _ in range(count)
    ]


def service_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any LATENTMIX_* or REDIS_URL setting of the
    caller's, plus `settings`: what a service process under test starts with."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LATENTMIX_") and key != "REDIS_URL"
    }
    return inherited | {"HF_HUB_OFFLINE": "1"} | settings


class WebhookReceiver(BaseHTTPRequestHandler):
    """Records each delivery (headers in lower case, body); answers 500 to the first
    `fail_first` of them, then `status`, with `location` as its Location header if set."""

    deliveries: list[dict]
    fail_first = 0
    status = 200
    location: str | None = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.deliveries.append({"headers": headers, "body": body})
        failing = len(self.deliveries) <= self.fail_first
        self.send_response(500 if failing else self.status)
        if self.location and not failing:
            self.send_header("Location", self.location)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """The app under a real uvicorn server on a loopback port; yields its base URL."""
    import uvicorn

    from latentmix.service.api.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
