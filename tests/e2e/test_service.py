"""End to end through real processes: a Redis-protocol server, moto's S3 server, a worker
process serving the tiny model, and the API under uvicorn; then the embedded mode
(`latentmix up`) with the local store. Everything over HTTP, as a client sees it."""

import io
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import (
    TINY_CARD,
    png_bytes,
    start_process,
    stop_process,
    wait_for,
    wait_ready,
)
from PIL import Image
from redis import Redis
from rq import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.serializers import JSONSerializer
from safetensors.numpy import load

from latentmix.service.core.augmentation_defaults import AugmentationDefaults
from latentmix.service.core.ids import mixed_latent_id

pytestmark = pytest.mark.e2e

STEPS = "8"  # few DDIM steps: the tiny model makes every step cheap, the flow is what matters
TINY_SIZE = 64


@pytest.fixture(scope="module")
def api(service_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=60) as client:
        yield client


def images_form(*images: bytes) -> list:
    return [("images", (f"image{i}.png", data, "image/png")) for i, data in enumerate(images)]


def invert(client, *images: bytes, steps: str = STEPS) -> tuple[list[str], dict]:
    response = client.post(
        "/latents",
        files=images_form(*images),
        data={"inversion_steps": steps, "guidance_scale": "1"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    return [entry["id"] for entry in body["latents"]], body["job"]


def fetch_png(client, url: str) -> Image.Image:
    response = client.get(url, follow_redirects=True)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_invert_mix_and_fetch_images_over_s3(api):
    latent_ids, job = invert(api, png_bytes(11), png_bytes(12))

    done = wait_for(api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["done"] == done["progress"]["total"] > 0
    assert done["result"]["latents"] == latent_ids

    meta = api.get(f"/latents/{latent_ids[0]}").json()
    assert meta["status"] == "ready" and meta["model"] == "tiny"
    assert meta["inversion"] == "ddim" and meta["aux"] == {}
    assert meta["shape"] == [4, TINY_SIZE // 8, TINY_SIZE // 8]
    assert meta["settings"]["steps"] == int(STEPS)
    data = load(api.get(f"/latents/{latent_ids[0]}/data").content)["latent"]
    assert data.shape == (4, 8, 8)
    assert meta["norm"] == pytest.approx(float(np.linalg.norm(data.astype(np.float64))), rel=1e-5)
    assert meta["channel_means"] == pytest.approx(data.reshape(4, -1).mean(axis=1), abs=1e-5)

    for method, weights in [
        ("nin/chm", [[0.5, 0.5], [0.25, 0.75]]),
        ("fix/chm", [0.3, 0.7]),
        ("lerp", None),
        ("slerp", [[1, 0], [0.5, 0.5]]),
    ]:
        response = api.post(
            "/mix",
            json={"latents": latent_ids, "weights": weights, "method": method, "steps": 8},
        )
        assert response.status_code == 202, response.text
        mixed = wait_for(api, response.json()["id"])
        assert mixed["status"] == "succeeded", mixed
        rows = 1 if weights is None or not isinstance(weights[0], list) else len(weights)
        assert len(mixed["result"]["images"]) == len(mixed["result"]["latents"]) == rows
        for image in mixed["result"]["images"]:
            png = fetch_png(api, image["url"])
            assert png.format == "PNG" and png.size == (TINY_SIZE, TINY_SIZE)

    # slerp with weights (1, 0) reproduces the first input exactly.
    slerp_first = mixed["result"]["latents"][0]
    reproduced = load(api.get(f"/latents/{slerp_first}/data").content)["latent"]
    np.testing.assert_allclose(reproduced, data, rtol=1e-5, atol=1e-6)


def test_images_are_served_through_presigned_urls(api):
    latent_ids, job = invert(api, png_bytes(13), png_bytes(14))
    wait_for(api, job["id"])
    mixed = wait_for(api, api.post("/mix", json={"latents": latent_ids, "steps": 4}).json()["id"])

    response = api.get(mixed["result"]["images"][0]["url"])

    assert response.status_code == 307
    assert "X-Amz-Expires=3600" in response.headers["location"]


def test_resubmitted_images_are_served_from_the_cache(api):
    latent_ids, job = invert(api, png_bytes(21), png_bytes(22))
    wait_for(api, job["id"])

    again = api.post(
        "/latents",
        files=images_form(png_bytes(21), png_bytes(22)),
        data={"inversion_steps": STEPS, "guidance_scale": "1"},
    )

    assert again.status_code == 200
    assert again.json()["job"] is None
    assert [e["id"] for e in again.json()["latents"]] == latent_ids
    assert all(e["cached"] and e["status"] == "ready" for e in again.json()["latents"])


def test_mixing_latents_still_being_inverted_waits_for_them(api):
    latent_ids, _ = invert(api, png_bytes(31), png_bytes(32))

    response = api.post("/mix", json={"latents": latent_ids, "method": "nin/chm", "steps": 4})

    mixed = wait_for(api, response.json()["id"])
    assert mixed["status"] == "succeeded", mixed
    planned = response.json()["planned"]  # known before the inputs existed
    assert [image["id"] for image in mixed["result"]["images"]] == [p["id"] for p in planned]
    assert mixed["result"]["latents"] == [p["latent"] for p in planned]
    parent = api.get(f"/latents/{mixed['result']['latents'][0]}").json()
    assert parent["source"] == "mix" and parent["parents"] == latent_ids


def test_mixed_latents_can_be_mixed_again(api):
    latent_ids, job = invert(api, png_bytes(41), png_bytes(42))
    wait_for(api, job["id"])
    first = wait_for(
        api,
        api.post("/mix", json={"latents": latent_ids, "weights": [[1, 2], [2, 1]]}).json()["id"],
    )

    again = api.post("/mix", json={"latents": first["result"]["latents"], "steps": 4})

    assert wait_for(api, again.json()["id"])["status"] == "succeeded"


def test_canceling_a_running_job_fails_the_mix_waiting_on_it(api, service_stack):
    latent_ids, job = invert(api, png_bytes(51), png_bytes(52), steps="500")
    mix_job = api.post("/mix", json={"latents": latent_ids}).json()
    deadline = time.monotonic() + 60
    while api.get(f"/jobs/{job['id']}").json()["progress"]["done"] < 1:
        assert time.monotonic() < deadline, "inversion never started"
        time.sleep(0.05)

    assert api.post(f"/jobs/{job['id']}/cancel").status_code == 202

    canceled = wait_for(api, job["id"])
    assert canceled["status"] == "canceled" and canceled["finished_at"] is not None
    assert 1 <= canceled["progress"]["done"] < canceled["progress"]["total"]
    # RQ's own tools (rq info, dashboards) count it as canceled too, not as failed.
    redis = Redis.from_url(service_stack.redis_url)
    assert job["id"] in CanceledJobRegistry("latentmix:tiny", connection=redis).get_job_ids()
    assert job["id"] not in FailedJobRegistry("latentmix:tiny", connection=redis).get_job_ids()
    failed = wait_for(api, mix_job["id"])
    assert failed["status"] == "failed"
    assert latent_ids[0] in failed["error"] and "canceled" in failed["error"]
    assert api.get(f"/latents/{latent_ids[0]}").json()["status"] == "failed"


def test_readiness_sees_the_worker(api):
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"] >= 1


def test_embedded_mode_runs_everything_and_keeps_data_across_restarts(tmp_path, up_environment):
    env = up_environment
    base_url = f"http://127.0.0.1:{env['LATENTMIX_PORT']}"
    redis_url = f"redis://127.0.0.1:{env['LATENTMIX_EMBEDDED_REDIS_PORT']}/0"
    log = tmp_path / "up.log"

    up = start_process(["-m", "latentmix.service.cli", "up"], env, log)
    try:
        wait_ready(base_url, timeout=120, processes=[up], logs=[log])
        with httpx.Client(base_url=base_url, timeout=60) as client:
            latent_ids, job = invert(client, png_bytes(61), png_bytes(62))
            assert wait_for(client, job["id"])["status"] == "succeeded"
            mixed = wait_for(client, client.post("/mix", json={"latents": latent_ids}).json()["id"])
            image = client.get(mixed["result"]["images"][0]["url"])
            assert image.status_code == 200  # the local store serves bytes, no redirect
            assert Image.open(io.BytesIO(image.content)).size == (TINY_SIZE, TINY_SIZE)
    finally:
        assert stop_process(up, signal.SIGINT, timeout=120) == 0, log.read_text()

    up = start_process(["-m", "latentmix.service.cli", "up"], env, log)
    try:
        wait_ready(base_url, timeout=120, processes=[up], logs=[log])
        with httpx.Client(base_url=base_url, timeout=60) as client:
            assert client.get(f"/latents/{latent_ids[0]}").json()["status"] == "ready"
            assert client.get(f"/jobs/{mixed['id']}").json()["status"] == "succeeded"
    finally:
        assert stop_process(up, signal.SIGINT, timeout=120) == 0, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output
    # Both starts printed the same URLs: the embedded Redis keeps its port.
    banners = [line for line in output.splitlines() if line.strip().startswith(("API", "Redis"))]
    assert (
        banners
        == [
            f"  API       {base_url}  (docs: {base_url}/docs)",
            f"  Redis     {redis_url} (embedded)",
        ]
        * 2
    )


def test_workers_publish_their_models_card(api):
    models = {model["name"]: model for model in api.get("/models").json()["models"]}
    ready = api.get("/readyz").json()

    assert models["tiny"]["workers"] >= 1 and models["tiny"]["default"]
    card = models["tiny"]["card"]
    # tiny has no measured augmentation settings: its family's paper defaults
    paper = AugmentationDefaults.paper(TINY_CARD.default_guidance)
    assert card == TINY_CARD.model_copy(update={"augmentation": paper}).model_dump(mode="json")
    assert ready["models"]["tiny"] == models["tiny"]["workers"]


def test_a_mix_queued_by_the_previous_release_still_runs(api, service_stack):
    latent_ids, job = invert(api, png_bytes(61), png_bytes(62))
    wait_for(api, job["id"])
    redis = Redis.from_url(service_stack.redis_url)
    queue = Queue("latentmix:tiny", connection=redis, serializer=JSONSerializer)
    request_of_0_1 = {
        "latents": latent_ids,
        "weights": [[0.5, 0.5]],
        "method": "nin/chm",
        "prompt": None,
        "steps": 4,
        "guidance_scale": 1.0,
        "producers": {},
        "seed": None,
    }
    legacy = queue.enqueue("worker.tasks.mix_latents", request_of_0_1, job_id=uuid.uuid4().hex)

    done = wait_for(api, legacy.id)

    assert done["status"] == "succeeded", done
    assert done["type"] == "mix"
    expected = mixed_latent_id(latent_ids, [0.5, 0.5], "nin/chm")
    assert done["result"]["latents"] == [expected]
    assert fetch_png(api, done["result"]["images"][0]["url"]).size == (TINY_SIZE, TINY_SIZE)


def test_identical_weight_rows_are_rendered_once_and_listed_for_each_row(api):
    latent_ids, job = invert(api, png_bytes(43), png_bytes(44))
    wait_for(api, job["id"])
    rows = [[1, 2], [2, 1], [1, 2], [2, 1]]  # two pictures, each asked for twice

    mixed = wait_for(
        api,
        api.post("/mix", json={"latents": latent_ids, "weights": rows, "steps": 4}).json()["id"],
    )

    assert mixed["status"] == "succeeded", mixed
    images = mixed["result"]["images"]
    assert [image["id"] for image in images[2:]] == [image["id"] for image in images[:2]]
    # Two distinct rows make one batch of the e2e worker's two: 4 steps, not 8.
    assert mixed["progress"]["done"] == mixed["progress"]["total"] == 4
    for image in images:
        assert fetch_png(api, image["url"]).size == (TINY_SIZE, TINY_SIZE)
