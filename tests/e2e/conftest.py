"""The service as a client sees it, one for the whole session, shared by the end-to-end
modules: a ServiceStack (service/cli/stack.py) with one worker serving the tiny model and the
API under uvicorn, on the session's Redis (a database of its own) and a fresh bucket of the
session's moto S3 server (so images answer with redirects to presigned URLs). Modules that
stop or kill parts of the service start their own stack (test_faults, test_up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    WEBHOOK_SECRET,
    free_port,
    make_s3_storage,
    png_bytes,
    service_environment,
)
from redis import Redis

from latentmix.service.cli.stack import ServiceStack
from latentmix.service.core.config import Settings

SERVICE_REDIS_DB = 7  # apart from the in-process tests' databases 0 and 2
SHAPES_REDIS_DB = 11  # the shapes stack's, apart from the other stacks' databases
MAX_BATCH = 2  # worker batch: a mix of a few images finishes in several batches (streaming)


@pytest.fixture(scope="session")
def service_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the session's service, so the tiny model is built once."""
    return tmp_path_factory.mktemp("service-data")


@pytest.fixture(scope="session")
def service_stack(
    redis_server: str, s3_server: str, service_data_dir: Path
) -> Iterator[ServiceStack]:
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{SERVICE_REDIS_DB}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    settings = Settings(
        model="tiny",
        data_dir=service_data_dir,
        port=free_port(),
        redis_url=redis_url,
        s3_bucket=make_s3_storage(s3_server).bucket,
        s3_endpoint_url=s3_server,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        webhook_secret=WEBHOOK_SECRET,
        max_batch_size=MAX_BATCH,
        inversion_batch_size=MAX_BATCH,  # several batches per job: streaming is tested
        clip_model="tiny-clip",  # evaluations: the seeded random encoders, offline
        inception_weights="tiny-inception",
    )
    with ServiceStack(settings, env=service_environment()) as stack:
        yield stack


@pytest.fixture(scope="session")
def shapes_url(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second stack, serving the trained `shapes` model (local store), for the tests that
    judge what the defaults draw: augment's and the experiment's."""
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{SHAPES_REDIS_DB}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    settings = Settings(
        model="shapes",
        data_dir=tmp_path_factory.mktemp("shapes-service"),
        port=free_port(),
        redis_url=redis_url,
    )
    with ServiceStack(settings, env=service_environment()) as stack:
        yield stack.api_url


@pytest.fixture(scope="session")
def service_url(service_stack: ServiceStack) -> str:
    """Base URL of the session's API, with one worker behind it."""
    return service_stack.api_url


@pytest.fixture
def up_environment(tmp_path: Path, service_data_dir: Path) -> dict[str, str]:
    """The environment of a `latentmix up` of the tiny model in its own data dir (with the
    session's model cache, so the tiny model is not built again), on free ports."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (service_data_dir / "models").mkdir(exist_ok=True)
    (data_dir / "models").symlink_to(service_data_dir / "models")
    return service_environment(
        LATENTMIX_MODEL="tiny",
        LATENTMIX_DATA_DIR=str(data_dir),
        LATENTMIX_PORT=str(free_port()),
        LATENTMIX_EMBEDDED_REDIS_PORT=str(free_port()),
    )


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """An ImageFolder tree: two classes of three small seeded pictures each."""
    root = tmp_path / "train"
    for offset, name in enumerate(["cat", "red_fox"]):
        (root / name).mkdir(parents=True)
        for index in range(3):
            (root / name / f"{index:03}.png").write_bytes(png_bytes(100 * offset + index))
    return root
