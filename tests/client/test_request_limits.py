"""The client and `latentmix augment` check their work against the service's limits
(GET /limits) before doing any of it, and split what can be split into requests that fit.

The API runs under a real uvicorn server with no worker: jobs stay queued."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from helpers import TINY_CARD, live_server, png_bytes
from redis import Redis

from latentmix.client import InvalidArgument, LatentMixClient, Limits
from latentmix.client.augment import EXIT_USAGE
from latentmix.client.augment import main as augment
from latentmix.service.core.model_cards import CARDS_KEY

# Without the checks, augment would wait forever on an inversion no worker runs.
pytestmark = pytest.mark.timeout(60)

Server = Callable[..., AbstractContextManager[tuple[str, Redis]]]


@pytest.fixture
def server(make_settings) -> Server:
    """`server(**settings)`: the API serving the tiny model's card; yields (URL, its Redis)."""

    @contextmanager
    def start(**overrides) -> Iterator[tuple[str, Redis]]:
        settings = make_settings(**overrides)
        with Redis.from_url(settings.redis_url) as redis:
            redis.hset(CARDS_KEY, TINY_CARD.model, TINY_CARD.model_dump_json())
            with live_server(settings) as url:
                yield url, redis

    return start


def make_tree(root: Path, classes: dict[str, int]) -> Path:
    for offset, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for index in range(count):
            (root / name / f"{index:03}.png").write_bytes(png_bytes(100 * offset + index))
    return root


def queued_jobs(redis: Redis) -> list[bytes]:
    return redis.keys("rq:job:*")


def test_augment_refuses_a_class_over_the_latents_limit_before_inverting_anything(
    server, tmp_path, capsys
):
    tree = make_tree(tmp_path / "train", {"cat": 2, "dog": 4})
    with server(max_latents_per_mix=3) as (url, redis):
        status = augment([str(tree), "--out", str(tmp_path / "out"), "--per-class", "2",
                          "--url", url, "--no-progress"])  # fmt: skip
        assert queued_jobs(redis) == []

    assert status == EXIT_USAGE
    error = capsys.readouterr().err
    assert "class 'dog' has 4 images" in error and "at most 3 latents" in error


def test_augment_refuses_a_batch_over_the_mixes_limit_before_inverting_anything(
    server, tmp_path, capsys
):
    tree = make_tree(tmp_path / "train", {"cat": 2})
    with server(max_mixes_per_request=10) as (url, redis):
        status = augment([str(tree), "--out", str(tmp_path / "out"), "--per-class", "20",
                          "--batch", "11", "--url", url, "--no-progress"])  # fmt: skip
        assert queued_jobs(redis) == []

    assert status == EXIT_USAGE
    assert "--batch 11 is over the service's limit of 10 mixes" in capsys.readouterr().err


def test_augment_refuses_an_image_over_the_upload_limit_before_inverting_anything(
    server, tmp_path, capsys
):
    tree = make_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    (tree / "dog" / "big.png").write_bytes(png_bytes(7, size=256))
    with server(max_upload_bytes=4096) as (url, redis):
        status = augment([str(tree), "--out", str(tmp_path / "out"), "--per-class", "2",
                          "--url", url, "--no-progress"])  # fmt: skip
        assert queued_jobs(redis) == []

    assert status == EXIT_USAGE
    assert "class 'dog': 'dog/big.png' has" in capsys.readouterr().err


def test_invert_splits_images_into_requests_of_at_most_max_files(server):
    images = [png_bytes(i) for i in range(5)]
    with server(max_files=2) as (url, redis), LatentMixClient(url) as lm:
        latents = lm.invert(images, wait=False)
        assert len(queued_jobs(redis)) == 3  # 2 + 2 + 1 images

    assert len({latent.id for latent in latents}) == 5


def test_the_client_reads_the_limits_once(server):
    settings = {"max_latents_per_mix": 3, "max_mixes_per_request": 2}
    with server(**settings) as (url, _), LatentMixClient(url) as lm:
        limits = lm.limits()
        assert lm.limits() is limits
    assert limits == Limits(max_latents_per_mix=3, max_mixes_per_request=2, max_wait_s=60.0)


@pytest.mark.parametrize(
    ("weights", "where"),
    [([float("nan"), 1.0], "entry 0"), ([[0.5, 0.5], [1.0, float("inf")]], "row 1, entry 1")],
)
def test_a_weight_that_is_not_a_finite_number_is_the_clients_own_error(weights, where):
    """JSON cannot carry it: the client says which weight, before sending anything."""
    with LatentMixClient("http://127.0.0.1:9") as client, pytest.raises(InvalidArgument) as error:
        client.mix(["a" * 32, "b" * 32], weights)
    assert f"weights {where} must be a finite number" in str(error.value)
