"""Webhook destinations: blocked networks are refused at submission (IP addresses) and at
each delivery (every address the host resolves to), and redirects are never followed."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from helpers import assert_problem, free_port, png_bytes

from service.config import Settings
from service.webhooks import WebhookRefused, blocked_address, deliver, verify_signature

SECRET = "webhook-secret-for-these-tests"
DEFAULT_BLOCKED = Settings().webhook_blocked_networks


@pytest.mark.parametrize(
    ("host", "networks", "expected"),
    [
        ("169.254.169.254", DEFAULT_BLOCKED, "169.254.169.254"),  # the cloud metadata endpoint
        ("::ffff:169.254.169.254", DEFAULT_BLOCKED, "::ffff:a9fe:a9fe"),  # the same, as IPv6
        ("[fe80::1]", DEFAULT_BLOCKED, "fe80::1"),
        ("127.0.0.1", DEFAULT_BLOCKED, None),
        ("10.1.2.3", DEFAULT_BLOCKED, None),
        ("localhost", ["127.0.0.0/8", "::1/128"], "127.0.0.1"),  # resolved, then checked
        ("169.254.169.254", [], None),
    ],
)
def test_blocked_addresses(host, networks, expected):
    assert blocked_address(host, networks) == expected


def test_a_malformed_blocked_network_is_refused_at_startup(monkeypatch):
    monkeypatch.setenv("LATENTMIX_WEBHOOK_BLOCKED_NETWORKS", "169.254.0.0/16, 10.0.0/8x")
    with pytest.raises(ValueError, match=r"10\.0\.0/8x"):
        Settings()


def test_a_webhook_to_a_blocked_address_is_refused_at_submission(make_client):
    client = make_client(webhook_secret=SECRET)
    response = client.post(
        "/latents",
        files=[("images", ("a.png", png_bytes(1), "image/png"))],
        data={"webhook": "http://169.254.169.254/latest/meta-data/"},
    )
    assert_problem(response, 422, "LATENTMIX_WEBHOOK_BLOCKED_NETWORKS")


class Recorder(BaseHTTPRequestHandler):
    """Records the POSTs it gets; answers with `status` and, if set, a Location header."""

    status = 200
    location: str | None = None
    received: list[tuple[dict, bytes]]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.received.append((headers, body))
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve() -> Iterator:
    """`serve(status=..., location=...)`: a recording HTTP server on loopback."""
    servers = []

    def start(**attributes) -> tuple[str, type[Recorder]]:
        handler = type("Handler", (Recorder,), {"received": [], **attributes})
        server = HTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_port}", handler

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def worker_settings(monkeypatch) -> Iterator:
    """`worker_settings(**values)`: the settings `deliver` reads, as on a worker."""

    def use(**values) -> None:
        settings = Settings(webhook_secret=SECRET, **values)
        monkeypatch.setattr("service.webhooks.get_settings", lambda: settings)

    return use


def test_a_delivery_is_signed(serve, worker_settings):
    address, receiver = serve()
    worker_settings()
    assert deliver(f"http://{address}/hook", {"id": "j1", "status": "succeeded"}) == 200
    headers, body = receiver.received[0]
    assert json.loads(body) == {"id": "j1", "status": "succeeded"}
    timestamp = int(headers["x-latentmix-timestamp"])
    assert verify_signature(SECRET, timestamp, body, headers["x-latentmix-signature"])


def test_a_host_that_resolves_into_a_blocked_network_is_never_connected(serve, worker_settings):
    address, receiver = serve()
    worker_settings(webhook_blocked_networks=["127.0.0.0/8", "::1/128"])
    port = address.rsplit(":", 1)[1]
    with pytest.raises(WebhookRefused, match=r"localhost resolves to (127\.0\.0\.1|::1)"):
        deliver(f"http://localhost:{port}/hook", {"id": "j2"})
    assert receiver.received == []


def test_a_redirect_fails_the_delivery_and_is_not_followed(serve, worker_settings):
    target, redirected_to = serve()
    address, _ = serve(status=307, location=f"http://{target}/elsewhere")
    worker_settings()
    with pytest.raises(urllib.error.HTTPError) as refused:
        deliver(f"http://{address}/hook", {"id": "j3"})
    assert refused.value.code == 307
    assert redirected_to.received == []
