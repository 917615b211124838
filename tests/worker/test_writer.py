"""OffloadedWrites: the worker's storage writes run in a child process, reads stay in-process."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import S3_TEST_CREDENTIALS, make_s3_storage

from latentmix.service.core.config import Settings
from latentmix.service.core.storage import S3Storage
from latentmix.worker.writer import OffloadedWrites, StorageWriteFailed


@pytest.fixture
def local_writes(tmp_path: Path):
    storage = OffloadedWrites(Settings(data_dir=tmp_path))
    yield storage
    storage.close()


def _s3_settings(s3: S3Storage, endpoint: str, bucket: str | None = None) -> Settings:
    return Settings(
        s3_bucket=bucket or s3.bucket,
        s3_endpoint_url=endpoint,
        s3_access_key_id=S3_TEST_CREDENTIALS["access_key_id"],
        s3_secret_access_key=S3_TEST_CREDENTIALS["secret_access_key"],
    )


def test_writes_happen_in_a_child_process_and_read_back_in_this_one(local_writes, tmp_path):
    data = bytes(range(256)) * 100
    assert local_writes.put("images/a.png", data, "image/png") is True
    assert local_writes._child.process.pid != os.getpid()
    assert (tmp_path / "store" / "images" / "a.png").read_bytes() == data
    assert local_writes.get("images/a.png") == data
    assert local_writes.get("images/a.png", max_bytes=3) == bytes([0, 1, 2])
    assert local_writes.exists("images/a.png")


def test_if_absent_is_passed_through(local_writes):
    assert local_writes.put("latents/x.safetensors", b"first", "x", if_absent=True) is True
    assert local_writes.put("latents/x.safetensors", b"second", "x", if_absent=True) is False
    assert local_writes.put("latents/x.safetensors", b"third", "x") is True
    assert local_writes.get("latents/x.safetensors") == b"third"


def test_concurrent_writes_each_get_their_own_answer(local_writes):
    payloads = {f"images/{i}.png": os.urandom(1000 + i) for i in range(64)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(lambda item: local_writes.put(*item, "image/png"), payloads.items()))
    assert stored == [True] * 64
    assert all(local_writes.get(key) == data for key, data in payloads.items())


def test_writes_reach_s3(s3_server):
    s3 = make_s3_storage(s3_server)
    writes = OffloadedWrites(_s3_settings(s3, s3_server))
    try:
        assert writes.put("images/b.png", b"png bytes", "image/png") is True
        assert s3.get("images/b.png") == b"png bytes"
        assert writes.get("images/b.png") == b"png bytes"  # reads: the same store
    finally:
        writes.close()


def test_a_failed_write_raises_with_the_store_s_error(s3_server):
    s3 = make_s3_storage(s3_server)
    writes = OffloadedWrites(_s3_settings(s3, s3_server, bucket="never-created"))
    try:
        with pytest.raises(StorageWriteFailed, match="NoSuchBucket"):
            writes.put("images/b.png", b"png bytes", "image/png")
    finally:
        writes.close()


def test_invalid_keys_are_rejected_before_anything_is_sent(local_writes, monkeypatch):
    monkeypatch.setattr(local_writes._child, "submit", None)  # would fail if called
    with pytest.raises(ValueError, match="invalid storage key"):
        local_writes.put("../escape", b"x", "x")


def test_a_write_in_flight_when_the_writer_dies_fails_and_the_next_starts_a_new_one(
    local_writes,
):
    local_writes.put("images/1.png", b"1", "image/png")
    writer = local_writes._writer()
    writer.process.send_signal(signal.SIGSTOP)  # the write below stays in flight
    in_flight = writer.submit(
        {"key": "images/2.png", "content_type": "image/png", "if_absent": False}, b"2"
    )
    writer.process.send_signal(signal.SIGKILL)
    with pytest.raises(StorageWriteFailed, match="exited"):
        in_flight.result(timeout=30)
    with pytest.raises(StorageWriteFailed, match="exited"):
        writer.submit({"key": "images/3.png", "content_type": "x", "if_absent": False}, b"3")

    assert local_writes.put("images/4.png", b"4", "image/png") is True
    assert local_writes._child is not writer
    assert not local_writes.exists("images/2.png")


def test_close_lets_the_child_exit(local_writes):
    local_writes.put("images/1.png", b"1", "image/png")
    child = local_writes._child.process
    local_writes.close()
    assert child.returncode == 0
