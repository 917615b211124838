"""The service's Redis connections, one home for how they are made: through Redis Sentinel
when `LATENTMIX_REDIS_SENTINELS` is set (always the current master of
`LATENTMIX_REDIS_SENTINEL_MASTER`: after a failover, the next command that fails on the old
master, or a new connection, finds the promoted replica), else `REDIS_URL`. TLS: a
`rediss://` URL, or Sentinel with `LATENTMIX_REDIS_CA_FILE` set, verifies the server
against that CA file."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from latentmix.service.core.config import Settings


def connect(settings: Settings, **options: Any) -> redis.Redis:
    """A client for the service's Redis; `options` go to every connection (timeouts,
    retries)."""
    if settings.redis_sentinels:
        return _sentinel(settings, redis.sentinel.Sentinel, options)
    return redis.Redis.from_url(settings.effective_redis_url, **_auth(settings), **options)


def connect_async(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """The same, for asyncio."""
    if settings.redis_sentinels:
        return _sentinel(settings, redis.asyncio.sentinel.Sentinel, options)
    return redis.asyncio.Redis.from_url(settings.effective_redis_url, **_auth(settings), **options)


def describe(settings: Settings) -> str:
    """Where the service's Redis is, for people (no password)."""
    if settings.redis_sentinels:
        sentinels = ", ".join(settings.redis_sentinels)
        return f"master {settings.redis_sentinel_master!r} of Sentinel {sentinels}"
    from latentmix.service.core.config import redacted

    return redacted(settings.effective_redis_url)


def _sentinel(settings: Settings, sentinel_class, options: dict[str, Any]):
    tls = _tls(settings) | ({"ssl": True} if settings.redis_ca_file else {})
    sentinel_auth = {}
    if settings.redis_sentinel_password is not None:
        sentinel_auth["password"] = settings.redis_sentinel_password.get_secret_value()
    timeouts = {
        key: options[key] for key in ("socket_timeout", "socket_connect_timeout") if key in options
    }
    sentinel = sentinel_class(
        [_host_port(address) for address in settings.redis_sentinels],
        sentinel_kwargs=sentinel_auth | tls | timeouts,
        **_password(settings),
        **tls,
    )
    return sentinel.master_for(settings.redis_sentinel_master, **options)


def _auth(settings: Settings) -> dict[str, Any]:
    return _password(settings) | _tls(settings)


def _password(settings: Settings) -> dict[str, Any]:
    if settings.redis_password is None:
        return {}
    return {"password": settings.redis_password.get_secret_value()}


def _tls(settings: Settings) -> dict[str, Any]:
    return {"ssl_ca_certs": str(settings.redis_ca_file)} if settings.redis_ca_file else {}


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or address, int(port) if port else 26379
