"""Job change notifications, so that long polls answer as soon as there is news.

Whoever changes a job in a way a long poll waits for (new images in its partial result,
its end, a cancel) announces it on the job's Redis channel. Each API process holds one
pattern subscription (`JobEvents.run`) and wakes the `GET /jobs/{id}?wait=` requests
watching that job. Pub/sub is fire-and-forget: a long poll still looks at its job every
FALLBACK_POLL_S, so a missed notification (while Redis reconnects, say) costs latency,
never an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis.asyncio
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

CHANNEL_PREFIX = "latentmix:job-events:"
FALLBACK_POLL_S = 1.0
RECONNECT_DELAY_S = 1.0

log = logging.getLogger("latentmix.job_events")


def announce(redis_or_pipeline: Redis | Pipeline, job_id: str) -> None:
    """Tell the waiting long polls that job `job_id` changed."""
    redis_or_pipeline.publish(CHANNEL_PREFIX + job_id, b"changed")


class JobEvents:
    """One API process's subscription to every job's channel, and the waits on it."""

    def __init__(self, connect: Callable[[], redis.asyncio.Redis]) -> None:
        """`connect`: a new asyncio client of the service's Redis (redis_connection.py)."""
        self._connect = connect
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `job_id` is announced while the block runs."""
        event = asyncio.Event()
        self._watchers[job_id].add(event)
        try:
            yield event
        finally:
            watchers = self._watchers[job_id]
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]

    async def run(self) -> None:
        """Listen until cancelled; after a Redis error, subscribe again."""
        while True:
            client = self._connect()
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                    async for message in pubsub.listen():
                        if message["type"] == "pmessage":
                            self._wake(message["channel"].decode().removeprefix(CHANNEL_PREFIX))
            except (RedisError, OSError) as exc:
                log.warning("job events: Redis unavailable (%s); subscribing again", exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                await client.aclose()

    def _wake(self, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()
