"""Fixtures for the API's hardening tests: apps with their own settings on a Redis database
of their own (so a worker some other module left running never takes their jobs), served
in-process or by a real uvicorn server on loopback; and a webhook receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from helpers import free_port
from redis import Redis

from latentmix.service.api.app import create_app
from latentmix.service.config import Settings

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
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """The app under a real uvicorn server on a loopback port; yields its base URL."""
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


@pytest.fixture
def make_live_server(make_settings) -> Callable[..., AbstractContextManager[str]]:
    return lambda **overrides: live_server(make_settings(**overrides))


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
