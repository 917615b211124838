"""`LATENTMIX_MODEL=shapes` behind the real service: a ServiceStack with one worker serving
the shipped trained model (its own stack: the session's serves `tiny`). Drawings of the
shapes world are inverted at the model's 64 px, mixed with `nin/chm` and generated; the
card says 64 px and a VAE that downsamples 4x."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, service_environment, wait_for
from PIL import Image
from redis import Redis

from latentmix.service.cli.stack import ServiceStack
from latentmix.service.core.config import Settings
from latentmix.worker.engine.shapes import world
from latentmix.worker.engine.shapes.classifier import judge, load_classifier
from latentmix.worker.engine.shapes.evaluation import to_tensor
from latentmix.worker.engine.shapes.model import CLASSIFIER_FILE

pytestmark = pytest.mark.e2e

SHAPES_REDIS_DB = 9  # apart from the other stacks' databases
STEPS = "10"


@pytest.fixture(scope="module")
def api(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{SHAPES_REDIS_DB}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    data_dir: Path = tmp_path_factory.mktemp("shapes-data")
    settings = Settings(model="shapes", data_dir=data_dir, port=free_port(), redis_url=redis_url)
    with (
        ServiceStack(settings, env=service_environment()) as stack,
        httpx.Client(base_url=stack.api_url, timeout=60) as client,
    ):
        yield client


def drawing_png(shape: str, colour: str) -> bytes:
    image = world.draw(shape, colour, "white", centre=(32, 32), radius=16)
    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().astype("uint8")).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_shapes_card_says_64px(api):
    models = {m["name"]: m for m in api.get("/models").json()["models"]}
    card = models["shapes"]["card"]
    assert (card["default_size"], card["vae_scale_factor"], card["latent_channels"]) == (64, 4, 4)
    assert card["scheduler"] == "DDIMScheduler"


def test_drawings_are_inverted_mixed_and_generated_at_64px(api):
    files = [
        ("images", ("circle.png", drawing_png("circle", "red"), "image/png")),
        ("images", ("square.png", drawing_png("square", "blue"), "image/png")),
    ]
    form = {"prompt": "a red circle", "inversion_steps": STEPS}
    response = api.post("/latents", files=files, data=form)
    assert response.status_code == 202, response.text
    job = wait_for(api, response.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    latents = job["result"]["latents"]
    assert api.get(f"/latents/{latents[0]}").json()["shape"] == [4, 16, 16]

    body = {"latents": latents, "method": "nin/chm", "weights": [1, 1], "steps": int(STEPS)}
    response = api.post("/mix", json=body)
    assert response.status_code == 202, response.text
    job = wait_for(api, response.json()["id"])
    assert job["status"] == "succeeded", job
    png = api.get(f"/images/{job['result']['images'][0]['id']}", follow_redirects=True)
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)


def test_a_mix_of_drawings_inverted_with_their_captions_keeps_each_ends_class(api):
    """No prompt in the mix, the model's default steps and guidance: each row is conditioned
    on the two captions mixed with its weights. Judged by the shapes classifier, the rows
    that lean 0.9 towards an input draw its class, as the inputs themselves do (with the
    empty prompt, the default before, the blue square came back as a red triangle:
    bench/shapes_report.py --parts mix-prompt)."""
    captions = ["a red circle", "a blue square"]
    files = [
        ("images", ("circle.png", drawing_png("circle", "red"), "image/png")),
        ("images", ("square.png", drawing_png("square", "blue"), "image/png")),
    ]
    response = api.post("/latents", files=files, data={"prompt": captions})
    assert response.status_code == 202, response.text
    answer = response.json()
    latents = [entry["id"] for entry in answer["latents"]]
    assert wait_for(api, answer["job"]["id"])["status"] == "succeeded"

    rows = [[1, 0], [0.9, 0.1], [0.1, 0.9], [0, 1]]
    response = api.post("/mix", json={"latents": latents, "weights": rows})
    assert response.status_code == 202, response.text
    job = wait_for(api, response.json()["id"])
    assert job["status"] == "succeeded", job

    images = job["result"]["images"]
    assert [image["provenance"]["prompt"] for image in images] == [None] * 4
    pictures = [
        Image.open(io.BytesIO(api.get(f"/images/{image['id']}", follow_redirects=True).content))
        for image in images
    ]
    classifier = load_classifier(CLASSIFIER_FILE)
    read = [label for label, _ in judge(classifier, to_tensor(pictures))]
    assert read == ["red circle", "red circle", "blue square", "blue square"]
