"""Job-end webhooks: a signed POST to the URL given at job creation, retried with backoff.

Delivery is an RQ job of its own (queue `latentmix-webhooks`, served by the workers between
GPU jobs), so a receiver that is down only delays it: RQ retries it after 1, 2, 4, ... s.

Signature: `X-LatentMix-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
with `X-LatentMix-Timestamp: <unix seconds>`; receivers check it with `verify_signature`
and reject old timestamps to stop replays.

Destinations: a webhook URL is the client's, so a delivery never reaches an address in
`LATENTMIX_WEBHOOK_BLOCKED_NETWORKS` (the cloud metadata endpoints by default): the host is
resolved once, every address checked, and the connection made to a checked address; no
redirect is followed and no proxy used.
"""

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import time
import urllib.parse
import urllib.request
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Retry
from rq.serializers import JSONSerializer

from latentmix.service.core.config import Settings, get_settings

WEBHOOK_QUEUE = "latentmix-webhooks"
DELIVER_TASK = "latentmix.service.core.webhooks.deliver"
RETRY_INTERVALS_S = [1, 2, 4, 8, 16, 32, 64]
TIMEOUT_S = 10


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_signature(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_queue(redis: Redis) -> Queue:
    return Queue(WEBHOOK_QUEUE, connection=redis, serializer=JSONSerializer)


def enqueue_delivery(redis: Redis, settings: Settings, url: str, payload: dict[str, Any]) -> None:
    webhook_queue(redis).enqueue(
        DELIVER_TASK,
        url,
        payload,
        retry=Retry(max=len(RETRY_INTERVALS_S), interval=RETRY_INTERVALS_S),
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        description=f"webhook {payload.get('type')} job {payload.get('id')} -> {url}",
    )


class WebhookRefused(RuntimeError):
    """A webhook URL whose host lies in a blocked network."""


def blocked_address(host: str, networks: list[str]) -> str | None:
    """The first address `host` resolves to (an IP literal is its own) that lies in one of
    `networks`, or None."""
    return _first_blocked(_resolve(host), networks)


def _first_blocked(addresses: list[str], networks: list[str]) -> str | None:
    parsed = [ipaddress.ip_network(network, strict=False) for network in networks]
    return next((address for address in addresses if _in_any(address, parsed)), None)


def _resolve(host: str, port: int | None = None) -> list[str]:
    infos = socket.getaddrinfo(host.strip("[]"), port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(sockaddr[0] for *_, sockaddr in infos))


def _in_any(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # without an IPv6 zone
    candidates = [ip, getattr(ip, "ipv4_mapped", None)]  # ::ffff:a.b.c.d is a.b.c.d
    return any(c is not None and c in network for c in candidates for network in networks)


def _opener(networks: list[str]) -> urllib.request.OpenerDirector:
    """urllib that connects only to addresses it has checked against `networks` (resolved
    once, so a DNS answer that changes between check and connect cannot slip through),
    follows no redirect (one could lead anywhere) and uses no proxy (it would resolve the
    host itself)."""

    def create_connection(address, timeout=None, source_address=None) -> socket.socket:
        host, port = address
        addresses = _resolve(host, port)
        if blocked := _first_blocked(addresses, networks):
            raise WebhookRefused(
                f"webhook host {host} resolves to {blocked}, which is in a blocked network "
                "(LATENTMIX_WEBHOOK_BLOCKED_NETWORKS)"
            )
        error: OSError = OSError(f"{host} has no address")
        for checked in addresses:
            try:
                return socket.create_connection((checked, port), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error

    # http.client opens its sockets through the instance attribute `_create_connection`.
    class Http(http.client.HTTPConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = create_connection

    class Https(http.client.HTTPSConnection):  # certificate and SNI still name the host
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = create_connection

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(Https, req, context=self._context)

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs) -> None:
            return None  # urllib then raises HTTPError with the 3xx status

    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), HttpHandler, HttpsHandler, NoRedirects
    )


def deliver(url: str, payload: dict[str, Any]) -> int:
    """POST the signed payload; any non-2xx (a redirect too) or network error raises, so
    RQ retries."""
    settings = get_settings()
    if settings.webhook_secret is None:
        raise RuntimeError("LATENTMIX_WEBHOOK_SECRET is not set on this worker")
    secret = settings.webhook_secret
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 (http/https checked at job creation)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "latentmix-webhook",
            "X-LatentMix-Event": "job.ended",
            "X-LatentMix-Timestamp": str(timestamp),
            "X-LatentMix-Signature": sign(secret.get_secret_value(), timestamp, body),
        },
    )
    with _opener(settings.webhook_blocked_networks).open(request, timeout=TIMEOUT_S) as response:
        return response.status
