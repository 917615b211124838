"""LatentCatalog lookups: records are read through a Redis copy, storage stays the truth."""

import numpy as np
import pytest
from redis import Redis
from safetensors import safe_open

from service.latents import LatentCatalog, LatentRecord, latent_key
from service.storage import LocalStorage


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
