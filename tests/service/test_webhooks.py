"""Webhook destinations: blocked networks are refused at submission (IP addresses) and at
each delivery (every address the host resolves to), and redirects are never followed."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from helpers import WebhookReceiver, assert_problem, png_bytes

from latentmix.service.core.config import Settings
from latentmix.service.core.webhooks import (
    WebhookRefused,
    blocked_address,
    deliver,
    verify_signature,
)

SECRET = "webhook-secret-for-these-tests"
DEFAULT_BLOCKED = Settings().webhook_blocked_networks


@pytest.mark.parametrize(
    ("host", "networks", "expected"),
    [
        ("169.254.169.254", DEFAULT_BLOCKED, "169.254.169.254"),  # the cloud metadata endpoint
        ("::ffff:169.254.169.254", DEFAULT_BLOCKED, "::ffff:169.254.169.254"),  # as IPv6
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


@pytest.fixture
def worker_settings(monkeypatch) -> Iterator:
    """`worker_settings(**values)`: the settings `deliver` reads, as on a worker."""

    def use(**values) -> None:
        settings = Settings(webhook_secret=SECRET, **values)
        monkeypatch.setattr("latentmix.service.core.webhooks.get_settings", lambda: settings)

    return use


def test_a_delivery_is_signed(webhook_server, worker_settings):
    address, receiver = webhook_server()
    worker_settings()
    assert deliver(f"http://{address}/hook", {"id": "j1", "status": "succeeded"}) == 200
    headers, body = receiver.deliveries[0]["headers"], receiver.deliveries[0]["body"]
    assert json.loads(body) == {"id": "j1", "status": "succeeded"}
    timestamp = int(headers["x-latentmix-timestamp"])
    assert verify_signature(SECRET, timestamp, body, headers["x-latentmix-signature"])


def test_a_host_that_resolves_into_a_blocked_network_is_never_connected(
    webhook_server, worker_settings
):
    address, receiver = webhook_server()
    worker_settings(webhook_blocked_networks=["127.0.0.0/8", "::1/128"])
    port = address.rsplit(":", 1)[1]
    with pytest.raises(WebhookRefused, match=r"localhost resolves to (127\.0\.0\.1|::1)"):
        deliver(f"http://localhost:{port}/hook", {"id": "j2"})
    assert receiver.deliveries == []


def test_a_redirect_fails_the_delivery_and_is_not_followed(webhook_server, worker_settings):
    target, redirected_to = webhook_server()
    address, _ = webhook_server(status=307, location=f"http://{target}/elsewhere")
    worker_settings()
    with pytest.raises(urllib.error.HTTPError) as refused:
        deliver(f"http://{address}/hook", {"id": "j3"})
    assert refused.value.code == 307
    assert redirected_to.deliveries == []


def test_the_connection_goes_to_the_address_that_was_checked(
    webhook_server, worker_settings, monkeypatch
):
    address, receiver = webhook_server()
    port = int(address.rsplit(":", 1)[1])
    worker_settings()
    # A rebinding DNS server: a harmless answer first, the metadata endpoint after that.
    answers = iter(["127.0.0.1", "169.254.169.254"])
    resolve = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        if host != "hook.example":
            return resolve(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert deliver(f"http://hook.example:{port}/hook", {"id": "j5"}) == 200
    assert len(receiver.deliveries) == 1
    assert next(answers) == "169.254.169.254", "the host was resolved more than once"


@pytest.fixture
def tls_serve(webhook_server, tmp_path) -> Iterator:
    """`tls_serve()`: the recording server behind TLS, with a certificate for `localhost`;
    returns its port, its handler and an SSL context that trusts the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    def start() -> tuple[int, type[WebhookReceiver], ssl.SSLContext]:
        address, handler = webhook_server(
            wrap=lambda sock: _server_context(cert_file, key_file).wrap_socket(
                sock, server_side=True
            )
        )
        trusting = ssl.create_default_context(cafile=str(cert_file))
        return int(address.rsplit(":", 1)[1]), handler, trusting

    return start


def _server_context(cert_file, key_file) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def test_https_deliveries_verify_the_host_name_while_connecting_to_the_checked_address(
    tls_serve, worker_settings, monkeypatch
):
    port, receiver, trusting = tls_serve()
    worker_settings()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        deliver(f"https://localhost:{port}/hook", {"id": "untrusted"})  # the system CAs

    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: trusting)
    assert deliver(f"https://localhost:{port}/hook", {"id": "j6"}) == 200
    assert json.loads(receiver.deliveries[-1]["body"]) == {"id": "j6"}
    with pytest.raises(urllib.error.URLError, match=r"not valid for '127\.0\.0\.1'"):
        deliver(f"https://127.0.0.1:{port}/hook", {"id": "wrong name"})  # cert is for localhost
