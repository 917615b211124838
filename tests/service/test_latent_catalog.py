"""LatentCatalog lookups: records are read through a Redis copy, storage stays the truth."""

import numpy as np
import pytest
from cachetools import LRUCache
from redis import Redis
from safetensors import safe_open

from latentmix.service.core.latents import LatentCatalog, LatentRecord, latent_key
from latentmix.service.core.storage import LocalStorage


class CountingStorage(LocalStorage):
    """A local store that counts reads."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        self.reads.append((key, max_bytes))
        return super().get(key, max_bytes=max_bytes)


@pytest.fixture
def catalog(redis_url, tmp_path) -> LatentCatalog:
    return LatentCatalog(CountingStorage(tmp_path / "store"), Redis.from_url(redis_url))


ARRAY = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)


def published(catalog: LatentCatalog, latent_id: str = "a" * 32, **fields) -> LatentRecord:
    record = LatentRecord.describe(
        latent_id, ARRAY, **({"model": "tiny", "source": "upload"} | fields)
    )
    assert catalog.publish(record, ARRAY) is True
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
    # One read of the file's start (its safetensors header), not of the whole tensor.
    assert catalog.storage.reads == [(latent_key(record.id), 64 * 1024)]


def test_many_records_are_looked_up_in_a_few_redis_round_trips(catalog, monkeypatch):
    records = [published(catalog, f"{i:032x}") for i in range(5)]
    catalog.redis.delete(f"latentmix:latent-record:{records[2].id}")  # only in storage
    monkeypatch.setattr("latentmix.service.core.latents._RECORDS_PER_READ", 2)
    reads = []
    mget = catalog.redis.mget
    monkeypatch.setattr(catalog.redis, "mget", lambda keys: reads.append(keys) or mget(keys))

    found = catalog.cached_records([*(r.id for r in records), "f" * 32])

    assert found == [*records[:2], None, *records[3:], None]
    assert [len(keys) for keys in reads] == [2, 2, 2]
    assert catalog.storage.reads == []


def test_a_record_longer_than_the_first_read_is_read_whole(catalog):
    parents = [f"{i:032x}" for i in range(3000)]  # about 100 KB of JSON
    record = published(catalog, source="mix", parents=parents, weights=[1 / 3000] * 3000)
    catalog.redis.flushall()
    assert catalog.record(record.id) == record
    assert [key for key, _ in catalog.storage.reads] == [latent_key(record.id)] * 2


def test_the_stored_file_is_the_latent_with_its_record_as_metadata(catalog, tmp_path):
    record = published(catalog)
    path = tmp_path / "latent.safetensors"
    path.write_bytes(catalog.storage.get(latent_key(record.id)))
    with safe_open(path, framework="numpy") as stored:
        np.testing.assert_array_equal(stored.get_tensor("latent"), ARRAY)
        assert LatentRecord.model_validate_json(stored.metadata()["latentmix.record"]) == record
    np.testing.assert_array_equal(catalog.load(record.id), ARRAY)


def test_an_unknown_latent_has_no_record(catalog):
    assert catalog.record("b" * 32) is None


def test_publishing_a_stored_id_again_keeps_the_first_latent(catalog):
    first = published(catalog)
    array = np.ones((4, 2, 2), np.float32)
    second = LatentRecord.describe(first.id, array, model="tiny", source="upload", prompt="new")
    assert catalog.publish(second, array) is False
    assert catalog.record(first.id) == first
    catalog.redis.flushall()
    assert catalog.record(first.id) == first
    np.testing.assert_array_equal(catalog.load(first.id), ARRAY)


@pytest.fixture
def remembering(catalog) -> LatentCatalog:
    """A catalog over the same store and Redis that keeps up to three 4x2x2 float32 latents
    in memory, as a worker's does; `catalog` plays another process."""
    memory = LRUCache(maxsize=3 * ARRAY.nbytes, getsizeof=lambda array: array.nbytes)
    return LatentCatalog(catalog.storage, catalog.redis, memory=memory)


def test_a_latent_this_process_published_loads_without_reading_storage(remembering):
    record = published(remembering)
    np.testing.assert_array_equal(remembering.load(record.id), ARRAY)
    assert remembering.storage.reads == []


def test_a_latent_another_process_published_is_read_from_storage_once(remembering, catalog):
    record = published(catalog)
    for _ in range(3):
        np.testing.assert_array_equal(remembering.load(record.id), ARRAY)
    assert remembering.storage.reads == [(latent_key(record.id), None)]


def test_a_kept_latent_cannot_be_changed_through_what_load_returns(remembering):
    record = published(remembering)
    remembering.load(record.id)[:] = 0
    np.testing.assert_array_equal(remembering.load(record.id), ARRAY)


def test_a_latent_stored_before_is_kept_as_stored_not_as_published_again(remembering, catalog):
    first = published(catalog)
    other = ARRAY + 1e-6  # the same computation on another device: the last bits differ
    record = LatentRecord.describe(first.id, other, model="tiny", source="upload")
    assert remembering.publish(record, other) is False
    np.testing.assert_array_equal(remembering.load(first.id), ARRAY)


def test_the_least_recently_used_latents_leave_memory_first(remembering):
    ids = [f"{i:032x}" for i in range(4)]
    for latent_id in ids[:3]:
        published(remembering, latent_id=latent_id)
    remembering.load(ids[0])  # now the most recently used
    published(remembering, latent_id=ids[3])  # memory holds three: ids[1] leaves
    for latent_id in (ids[0], ids[2], ids[3], ids[1]):
        np.testing.assert_array_equal(remembering.load(latent_id), ARRAY)
    assert remembering.storage.reads == [(latent_key(ids[1]), None)]


def test_a_latent_larger_than_the_memory_is_loaded_but_not_kept(remembering):
    large = np.ones((4, 8, 8), np.float32)  # 16 times ARRAY, memory holds 3
    record = LatentRecord.describe("d" * 32, large, model="tiny", source="upload")
    assert remembering.publish(record, large) is True
    for _ in range(2):
        np.testing.assert_array_equal(remembering.load(record.id), large)
    assert remembering.storage.reads == [(latent_key(record.id), None)] * 2
