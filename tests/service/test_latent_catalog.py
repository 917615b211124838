"""LatentCatalog lookups: records are read through a Redis copy, storage stays the truth."""

import numpy as np
import pytest
from redis import Redis

from service.latents import LatentCatalog, LatentRecord, record_key
from service.storage import LocalStorage


class CountingStorage(LocalStorage):
    """A local store that counts reads."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get(key)


@pytest.fixture
def catalog(redis_url, tmp_path) -> LatentCatalog:
    return LatentCatalog(CountingStorage(tmp_path / "store"), Redis.from_url(redis_url))


def published(catalog: LatentCatalog, latent_id: str = "a" * 32) -> LatentRecord:
    array = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
    record = LatentRecord.describe(latent_id, array, model="tiny", source="upload")
    catalog.publish(record, array)
    return record


def test_a_published_record_is_looked_up_without_reading_storage(catalog):
    record = published(catalog)
    assert catalog.record(record.id) == record
    assert catalog.storage.reads == []


def test_a_record_only_in_storage_is_found_and_then_cached(catalog):
    record = published(catalog)
    catalog.redis.flushall()  # e.g. a Redis restarted without persistence
    assert catalog.record(record.id) == record
    assert catalog.record(record.id) == record
    assert catalog.storage.reads == [record_key(record.id)]


def test_an_unknown_latent_has_no_record(catalog):
    assert catalog.record("b" * 32) is None


def test_republishing_replaces_the_cached_record(catalog):
    first = published(catalog)
    array = np.ones((4, 2, 2), np.float32)
    second = LatentRecord.describe(first.id, array, model="tiny", source="upload", prompt="new")
    catalog.publish(second, array)
    assert catalog.record(first.id).prompt == "new"
