"""Server features for data-augmentation backends, through the real processes: seeded
sampling with provenance, streamed results, the contact sheet, /metrics, webhooks."""

import io
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import WEBHOOK_SECRET, png_bytes, wait_for
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from latentmix.service.core.webhooks import verify_signature
from latentmix.service.core.weight_sampling import sample_weights

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(service_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def class_latents(api) -> list[str]:
    """Four inverted images: one small class."""
    files = [("images", (f"{i}.png", png_bytes(100 + i), "image/png")) for i in range(4)]
    response = api.post("/latents", files=files, data={"inversion_steps": "4", "prompt": "a cat"})
    assert wait_for(api, response.json()["job"]["id"])["status"] == "succeeded"
    return [entry["id"] for entry in response.json()["latents"]]


def sample_mix(api, latents, **sample) -> dict:
    body = {"latents": latents, "steps": 4, "sample": {"count": 6, "seed": 7} | sample}
    response = api.post("/mix", json=body)
    assert response.status_code == 202, response.text
    job = wait_for(api, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_a_seeded_sample_gives_identical_weights_and_images_twice(api, class_latents):
    first = sample_mix(api, class_latents)
    second = sample_mix(api, class_latents)
    other_seed = sample_mix(api, class_latents, seed=8)

    weights = [image["provenance"]["weights"] for image in first["result"]["images"]]
    assert weights == [image["provenance"]["weights"] for image in second["result"]["images"]]
    assert weights != [image["provenance"]["weights"] for image in other_seed["result"]["images"]]
    for a, b in zip(first["result"]["images"], second["result"]["images"], strict=True):
        assert (
            api.get(a["url"], follow_redirects=True).content
            == api.get(b["url"], follow_redirects=True).content
        )
    np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, atol=1e-9)


def test_every_image_carries_its_provenance(api, class_latents):
    job = sample_mix(api, class_latents, scheme="subset", k=2, seed=3)

    assert len(job["result"]["images"]) == 6
    for image in job["result"]["images"]:
        provenance = image["provenance"]
        assert provenance["inputs"] == class_latents
        assert provenance["method"] == "nin/chm"
        assert provenance["prompt"] == "a cat"  # the prompt the inputs were inverted with
        assert provenance["seed"] == 3 and provenance["steps"] == 4
        assert sorted(provenance["weights"]) == [0, 0, 0.5, 0.5]
        mixed = api.get(f"/latents/{image['latent']}").json()
        assert mixed["weights"] == provenance["weights"] and mixed["parents"] == class_latents


def test_images_of_a_large_job_are_visible_before_it_ends(api, class_latents):
    # 3 batches of 4 (the CPU batch size). The first batch's images exist already (rendered
    # by an earlier job), so that batch finishes at once while the next two take a while.
    rows = sample_weights(len(class_latents), 12, "dirichlet", seed=11)
    body = {"latents": class_latents, "steps": 50, "guidance_scale": 1}
    wait_for(api, api.post("/mix", json=body | {"weights": rows[:4]}).json()["id"])
    job_id = api.post("/mix", json=body | {"weights": rows}).json()["id"]

    deadline = time.monotonic() + 300
    while True:
        job = api.get(f"/jobs/{job_id}").json()
        images = (job["result"] or {}).get("images", [])
        if job["status"] == "running" and images:
            break
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.05)

    assert len(images) == 4
    assert job["result"]["partial"] is True
    early = api.get(images[0]["url"], follow_redirects=True)
    assert Image.open(io.BytesIO(early.content)).size == (64, 64)
    assert len(wait_for(api, job_id, timeout=600)["result"]["images"]) == 12


def test_contact_sheet_tiles_the_job_images(api, class_latents):
    job = sample_mix(api, class_latents, seed=21)

    sheet = api.get(f"/jobs/{job['id']}/grid.png", params={"columns": 4, "tile": 32})

    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(sheet.content)).size == (4 * 32, 2 * 32)  # 6 images, 2 rows
    missing = api.get(f"/jobs/{'0' * 32}/grid.png")
    assert missing.status_code == 404


def scrape(api) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_what_happened(api):
    before = scrape(api)
    files = [("images", ("m.png", png_bytes(321), "image/png"))]
    first = api.post("/latents", files=files, data={"inversion_steps": "4"}).json()
    wait_for(api, first["job"]["id"])
    api.post("/latents", files=files, data={"inversion_steps": "4"})  # a cache hit
    mix_id = api.post("/mix", json={"latents": [first["latents"][0]["id"]], "steps": 4}).json()[
        "id"
    ]
    wait_for(api, mix_id)
    after = scrape(api)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("latentmix_jobs_submitted_total", type="invert") == 1
    assert delta("latentmix_jobs_submitted_total", type="mix") == 1
    assert delta("latentmix_latent_cache_total", result="miss") == 1
    assert delta("latentmix_latent_cache_total", result="hit") == 1
    assert delta("latentmix_jobs_finished_total", type="invert", status="succeeded") == 1
    assert delta("latentmix_jobs_finished_total", type="mix", status="succeeded") == 1
    assert delta("latentmix_job_duration_seconds_count", type="mix") == 1
    assert delta("latentmix_queue_wait_seconds_count", type="invert") == 1
    requests = delta(
        "latentmix_http_request_duration_seconds_count",
        method="POST",
        route="/latents",
        status="202",
    )
    assert requests == 1
    assert after[("latentmix_queue_depth", (("queue", "latentmix:tiny"),))] == 0


def test_a_webhook_receives_a_signed_call_retried_after_a_failure(api, class_latents, receiver):
    url, handler = receiver
    handler.fail_first = 1
    body = {"latents": class_latents[:2], "steps": 4, "webhook": url}
    job_id = api.post("/mix", json=body).json()["id"]
    wait_for(api, job_id)

    deadline = time.monotonic() + 30
    while len(handler.deliveries) < 2:  # the first answer was a 500: RQ retries after 1 s
        assert time.monotonic() < deadline, handler.deliveries
        time.sleep(0.1)

    delivery = handler.deliveries[-1]
    headers = delivery["headers"]  # names in lower case
    assert verify_signature(
        WEBHOOK_SECRET,
        int(headers["x-latentmix-timestamp"]),
        delivery["body"],
        headers["x-latentmix-signature"],
    )
    assert not verify_signature(
        "another secret",
        int(headers["x-latentmix-timestamp"]),
        delivery["body"],
        headers["x-latentmix-signature"],
    )
    payload = json.loads(delivery["body"])
    assert payload["id"] == job_id and payload["type"] == "mix"
    assert payload["status"] == "succeeded"
    assert len(payload["result"]["images"]) == 1
