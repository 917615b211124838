"""Storage behaviour, run against both the local store and S3 (a moto server subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import free_port, make_s3_storage

from latentmix.service.core.config import Settings
from latentmix.service.core.storage import (
    LocalStorage,
    NotFound,
    S3Storage,
    Storage,
    StorageUnavailable,
    storage_from_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "jobs/0123abcd/latent.safetensors"
INVALID_KEYS = ["../x", "/abs", "a b", "", "a//b", "a/../b", "a/./b", "trailing/", "ünï"]


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> Storage:
    """Each test using this runs once per backend."""
    return request.getfixturevalue(f"{request.param}_storage")


def test_put_then_get_returns_the_same_bytes(storage: Storage) -> None:
    data = bytes(range(256)) * 64
    storage.put(KEY, data, "application/octet-stream")
    assert storage.get(KEY) == data


def test_exists_is_true_only_after_put(storage: Storage) -> None:
    assert not storage.exists(KEY)
    storage.put(KEY, b"x", "application/octet-stream")
    assert storage.exists(KEY)


def test_delete_removes_the_object(storage: Storage) -> None:
    storage.put(KEY, b"x", "application/octet-stream")
    storage.delete(KEY)
    assert not storage.exists(KEY)
    with pytest.raises(NotFound):
        storage.get(KEY)


def test_delete_of_a_missing_key_is_not_an_error(storage: Storage) -> None:
    assert storage.delete("never/written.bin") is None  # no NotFound
    assert not storage.exists("never/written.bin")


def test_get_of_a_missing_key_raises_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound) as excinfo:
        storage.get("never/written.bin")
    assert isinstance(excinfo.value, KeyError)


def test_get_of_a_key_prefix_raises_not_found(storage: Storage) -> None:
    storage.put(KEY, b"x", "application/octet-stream")
    assert not storage.exists("jobs/0123abcd")
    with pytest.raises(NotFound):
        storage.get("jobs/0123abcd")


def test_put_overwrites_an_existing_object(storage: Storage) -> None:
    storage.put(KEY, b"first version", "application/octet-stream")
    storage.put(KEY, b"second", "application/octet-stream")
    assert storage.get(KEY) == b"second"


def test_put_if_absent_stores_only_the_first_version(storage: Storage) -> None:
    assert storage.put(KEY, b"first", "application/octet-stream", if_absent=True) is True
    assert storage.put(KEY, b"second", "application/octet-stream", if_absent=True) is False
    assert storage.get(KEY) == b"first"


def test_local_concurrent_puts_if_absent_store_exactly_one(local_storage: LocalStorage) -> None:
    # Local only: S3 makes the same promise for If-None-Match writes, but moto checks, then
    # writes, so two racing writes can both succeed there.
    versions = [f"version {i}".encode() for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(
            pool.map(
                lambda data: local_storage.put(KEY, data, "text/plain", if_absent=True), versions
            )
        )
    assert stored.count(True) == 1
    assert local_storage.get(KEY) == versions[stored.index(True)]


def test_get_with_max_bytes_returns_the_start_of_the_object(storage: Storage) -> None:
    storage.put(KEY, b"0123456789", "application/octet-stream")
    assert storage.get(KEY, max_bytes=4) == b"0123"
    assert storage.get(KEY, max_bytes=100) == b"0123456789"
    with pytest.raises(NotFound):
        storage.get("never/written.bin", max_bytes=4)


def test_empty_object_round_trips(storage: Storage) -> None:
    storage.put(KEY, b"", "application/octet-stream")
    assert storage.exists(KEY)
    assert storage.get(KEY) == b""


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_rejected(storage: Storage, key: str) -> None:
    for operation in (
        lambda: storage.put(key, b"x", "text/plain"),
        lambda: storage.get(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.url(key),
    ):
        with pytest.raises(ValueError, match="invalid storage key"):
            operation()


def test_check_passes_for_a_usable_store(storage: Storage) -> None:
    assert storage.check() is None  # raises when the store cannot be used
    storage.put(KEY, b"x", "image/png")
    assert storage.check() is None and storage.get(KEY) == b"x"


# Local store.


def test_local_url_is_none(local_storage: LocalStorage) -> None:
    local_storage.put(KEY, b"x", "image/png")
    assert local_storage.url(KEY) is None


def test_local_put_leaves_no_temp_files(local_storage: LocalStorage) -> None:
    keys = [KEY, "jobs/0123abcd/image.png", "top.bin"]
    for key in keys:
        local_storage.put(key, b"x" * 1000, "application/octet-stream")
        local_storage.put(key, b"y" * 10, "application/octet-stream")
        local_storage.put(key, b"z", "application/octet-stream", if_absent=True)
    files = sorted(p.relative_to(local_storage.root).as_posix() for p in _files(local_storage.root))
    assert files == sorted(keys)


def test_local_failed_put_keeps_the_old_file_and_no_temp_file(
    local_storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_storage.put(KEY, b"old", "application/octet-stream")

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        local_storage.put(KEY, b"new, never published", "application/octet-stream")
    monkeypatch.undo()

    assert local_storage.get(KEY) == b"old"
    assert [p.name for p in _files(local_storage.root)] == ["latent.safetensors"]


def test_local_check_raises_when_root_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageUnavailable):
        LocalStorage(tmp_path / "file" / "store").check()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# S3.


def test_s3_stores_the_content_type(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, b"x", "application/vnd.safetensors")
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key=KEY)
    assert head["ContentType"] == "application/vnd.safetensors"


def test_s3_presigned_url_serves_the_object_over_plain_http(s3_server: str) -> None:
    storage = make_s3_storage(s3_server, presign_expiry_s=123)
    storage.put(KEY, b"latent bytes", "application/octet-stream")

    url = storage.url(KEY)

    parts = urlsplit(url)
    assert parts.path == f"/{storage.bucket}/{KEY}"  # path-style addressing
    assert parse_qs(parts.query)["X-Amz-Expires"] == ["123"]
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (test server URL)
        assert response.read() == b"latent bytes"


def test_s3_prefix_is_applied_to_object_keys(s3_server: str) -> None:
    storage = make_s3_storage(s3_server, prefix="tenant-a/latentmix")
    storage.put(KEY, b"x", "application/octet-stream")

    listed = storage.client.list_objects_v2(Bucket=storage.bucket)
    assert [o["Key"] for o in listed["Contents"]] == [f"tenant-a/latentmix/{KEY}"]
    assert storage.get(KEY) == b"x"
    assert urlsplit(storage.url(KEY)).path == f"/{storage.bucket}/tenant-a/latentmix/{KEY}"


def test_s3_check_raises_quickly_when_the_endpoint_is_not_listening() -> None:
    storage = S3Storage(
        bucket="unreachable",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="testing",
        secret_access_key="testing",
    )
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        storage.check()
    assert time.monotonic() - started < 3


def test_s3_check_raises_for_a_missing_bucket(s3_server: str) -> None:
    storage = S3Storage(
        bucket="no-such-bucket", endpoint_url=s3_server, access_key_id="a", secret_access_key="b"
    )
    with pytest.raises(StorageUnavailable):
        storage.check()


def test_s3_ensure_bucket_is_idempotent(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, b"kept", "image/png")
    s3_storage.ensure_bucket()  # the bucket exists already: nothing happens to it
    s3_storage.ensure_bucket()
    assert s3_storage.check() is None
    assert s3_storage.get(KEY) == b"kept"


@pytest.mark.parametrize(
    ("option", "value"),
    [("addressing_style", "sideways"), ("presign_expiry_s", 0), ("presign_expiry_s", 8 * 86400)],
)
def test_s3_rejects_bad_options(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        S3Storage(bucket="b", **{option: value})  # type: ignore[arg-type]


# Backend selection and imports.


def test_storage_from_settings_without_a_bucket_is_local(tmp_path: Path) -> None:
    storage = storage_from_settings(Settings(s3_bucket=None, data_dir=tmp_path))
    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path / "store"


def test_storage_from_settings_with_a_bucket_is_s3() -> None:
    settings = Settings(
        s3_bucket="latents",
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_prefix="p",
        presign_expiry_s=60,
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.presign_expiry_s) == ("latents", "p/", 60)


def test_importing_storage_does_not_import_torch() -> None:
    code = "import latentmix.service.core.storage, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_s3_presigned_urls_use_the_public_endpoint_when_set(s3_server: str) -> None:
    public = s3_server.replace("127.0.0.1", "localhost")
    storage = make_s3_storage(s3_server, public_endpoint_url=public)
    storage.put("images/a.png", b"png bytes", "image/png")

    url = storage.url("images/a.png")

    assert url.startswith(f"{public}/{storage.bucket}/images/a.png?")
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (local test URL)
        assert response.read() == b"png bytes"
