"""The service as the client sees it: a worker serving the tiny model and the API under
uvicorn, on the session's Redis (a database of their own) and a fresh bucket of the
session's moto S3 server (so images answer with redirects to presigned URLs). Started once
for the whole tests/client package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    free_port,
    make_s3_storage,
    png_bytes,
    service_environment,
    start_process,
    stop_process,
    wait_ready,
)
from redis import Redis

CLIENT_REDIS_DB = 7  # apart from the other suites' database 0
MAX_BATCH = 2  # worker batch: a mix of a few images finishes in several batches (streaming)


@pytest.fixture(scope="session")
def client_service_url(redis_server, s3_server, tmp_path_factory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("client-service")
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{CLIENT_REDIS_DB}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    storage = make_s3_storage(s3_server)
    port = free_port()
    env = service_environment(
        **{
            "LATENTMIX_MODEL": "tiny",
            "LATENTMIX_DATA_DIR": str(data_dir),
            "LATENTMIX_PORT": str(port),
            "LATENTMIX_MAX_BATCH_SIZE": str(MAX_BATCH),
            "REDIS_URL": redis_url,
            "LATENTMIX_S3_BUCKET": storage.bucket,
            "LATENTMIX_S3_ENDPOINT_URL": s3_server,
            "LATENTMIX_S3_ACCESS_KEY_ID": "testing",
            "LATENTMIX_S3_SECRET_ACCESS_KEY": "testing",
        }
    )
    logs = [data_dir / "worker.log", data_dir / "api.log"]
    processes = [
        start_process(["-m", "latentmix.worker"], env, logs[0]),
        start_process(["-m", "latentmix.service.api"], env, logs[1]),
    ]
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, timeout=120, processes=processes, logs=logs)
        yield base_url
    finally:
        for process in reversed(processes):
            stop_process(process)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """An ImageFolder tree: two classes of three small seeded pictures each."""
    root = tmp_path / "train"
    for offset, name in enumerate(["cat", "red_fox"]):
        (root / name).mkdir(parents=True)
        for index in range(3):
            (root / name / f"{index:03}.png").write_bytes(png_bytes(100 * offset + index))
    return root
