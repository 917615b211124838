"""Job-end webhooks: a signed POST to the URL given at job creation, retried with backoff.

Delivery is an RQ job of its own (queue `latentmix-webhooks`, served by the workers between
GPU jobs), so a receiver that is down only delays it: RQ retries it after 1, 2, 4, ... s.

Signature: `X-LatentMix-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
with `X-LatentMix-Timestamp: <unix seconds>`; receivers check it with `verify_signature`
and reject old timestamps to stop replays.

Destinations: a webhook URL is the client's, so a delivery never reaches an address in
`LATENTMIX_WEBHOOK_BLOCKED_NETWORKS` (the cloud metadata endpoints by default): the host is
resolved and every address checked right before connecting, and redirects are not followed.
"""

import hashlib
import hmac
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

from service.config import Settings, get_settings

WEBHOOK_QUEUE = "latentmix-webhooks"
DELIVER_TASK = "service.webhooks.deliver"
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
    blocked = [ipaddress.ip_network(network, strict=False) for network in networks]
    if not blocked:
        return None
    for *_, sockaddr in socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP):
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])  # no IPv6 zone
        candidates = [address, getattr(address, "ipv4_mapped", None)]
        if any(a is not None and a in network for a in candidates for network in blocked):
            return str(address)
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead anywhere, blocked networks included: it fails the delivery."""

    def redirect_request(self, *args, **kwargs) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def deliver(url: str, payload: dict[str, Any]) -> int:
    """POST the signed payload; any non-2xx (a redirect too) or network error raises, so
    RQ retries."""
    settings = get_settings()
    if settings.webhook_secret is None:
        raise RuntimeError("LATENTMIX_WEBHOOK_SECRET is not set on this worker")
    host = urllib.parse.urlsplit(url).hostname or ""
    if address := blocked_address(host, settings.webhook_blocked_networks):
        raise WebhookRefused(
            f"webhook host {host} resolves to {address}, which is in a blocked network "
            "(LATENTMIX_WEBHOOK_BLOCKED_NETWORKS)"
        )
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
    with _OPENER.open(request, timeout=TIMEOUT_S) as response:
        return response.status
