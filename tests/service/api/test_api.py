"""The HTTP API in-process (TestClient) against a real Redis server and a local store.

No worker runs here: jobs stay queued. End-to-end behaviour is in test_e2e.py."""

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    TINY_CARD,
    assert_problem,
    latent_file,
    png_bytes,
    upload_latent,
    upload_random_latents,
)
from PIL import Image
from redis import Redis
from safetensors.numpy import load

from latentmix.service.api.app import create_app
from latentmix.service.api.routes import jobs as jobs_routes
from latentmix.service.core.contract import MixRequest
from latentmix.service.core.ids import image_id, mixed_latent_id
from latentmix.service.core.job_metrics import JOBS_KEY
from latentmix.service.core.jobs import append_partial_result, fetch_job
from latentmix.service.core.model_cards import CARDS_KEY, publish_card, stop_serving

OPENAPI_FILE = Path(__file__).parents[3] / "openapi" / "openapi.json"


def post_images(client, *images: bytes, **form):
    files = [("images", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/latents", files=files, data=form)


def test_posting_images_queues_one_inversion_job(client):
    response = post_images(client, png_bytes(1), png_bytes(2), inversion_steps="10")

    assert response.status_code == 202
    body = response.json()
    assert body["job"]["type"] == "invert"
    assert body["job"]["status"] == "queued"
    assert body["job"]["model"] == "tiny"
    assert [entry["status"] for entry in body["latents"]] == ["pending", "pending"]
    assert all(
        entry["job"] == body["job"]["id"] and not entry["cached"] for entry in body["latents"]
    )
    assert len({entry["id"] for entry in body["latents"]}) == 2


def test_latent_ids_depend_on_bytes_and_settings(client):
    first = post_images(client, png_bytes(1), inversion_steps="10").json()["latents"][0]["id"]
    other_steps = post_images(client, png_bytes(1), inversion_steps="20").json()["latents"][0]["id"]
    other_image = post_images(client, png_bytes(2), inversion_steps="10").json()["latents"][0]["id"]

    assert len({first, other_steps, other_image}) == 3


def test_resubmitting_pending_images_queues_nothing(client):
    first = post_images(client, png_bytes(1), png_bytes(2)).json()

    again = post_images(client, png_bytes(2), png_bytes(1))

    assert again.status_code == 200
    assert again.json()["job"] is None
    assert [e["job"] for e in again.json()["latents"]] == [first["job"]["id"]] * 2
    assert all(e["cached"] for e in again.json()["latents"])


def test_the_same_image_twice_in_one_request_is_inverted_once(client, settings):
    body = post_images(client, png_bytes(3), png_bytes(3)).json()

    assert body["latents"][0]["id"] == body["latents"][1]["id"]
    job = fetch_job(client.app.state.redis, body["job"]["id"])
    assert len(job.args[0]["items"]) == 1


def strip_png(width: int, height: int) -> bytes:
    """A plain picture of any shape (the seeded ones are square)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "status", "phrase"),
    [
        ([], 422, "at least one file part"),
        ([("images", ("notes.png", b"hello, not an image", "image/png"))], 415, "notes.png"),
        ([("images", ("anim.gif", png_bytes(1, image_format="GIF"), "image/gif"))], 415, "GIF"),
        ([("images", ("cut.png", png_bytes(1)[:60], "image/png"))], 415, "cut.png"),
        ([("images", ("dot.png", strip_png(1, 1), "image/png"))], 422, "dot.png' is 1x1"),
        ([("images", ("strip.png", strip_png(4000, 30), "image/png"))], 422, "aspect ratio"),
    ],
)
def test_bad_image_uploads_are_rejected_with_a_problem(client, files, status, phrase):
    assert_problem(client.post("/latents", files=files), status, phrase)


def test_prompt_count_must_match_images(client):
    response = post_images(client, png_bytes(1), png_bytes(2), prompt=["a", "b", "c"])
    assert_problem(response, 422, "3 prompts for 2 images")


def test_overlong_prompts_are_rejected_naming_the_limit(client, two_latents):
    long = "a cat " * 400  # 2400 characters; the text encoder would read the first 77 tokens
    response = post_images(client, png_bytes(1), png_bytes(2), prompt=["a dog", long])
    assert_problem(response, 422, "prompt 1 has 2400 characters; the limit is 2000")
    response = client.post("/mix", json={"latents": two_latents, "prompt": long})
    assert_problem(response, 422, "prompt")
    at_the_limit = client.post("/mix", json={"latents": two_latents, "prompt": long[:2000]})
    assert at_the_limit.status_code == 202


def test_out_of_range_settings_name_the_field(client):
    response = post_images(client, png_bytes(1), inversion_steps="0")
    assert_problem(response, 422, "inversion_steps")
    response = post_images(client, png_bytes(1), size="100")
    assert_problem(response, 422, "size")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_guidance_that_is_not_a_finite_number_is_named_so(client, two_latents, value):
    response = post_images(client, png_bytes(1), guidance_scale=value)
    assert_problem(response, 422, "guidance_scale", "finite number")
    body = json.dumps({"latents": two_latents, "guidance_scale": float(value)})  # NaN, Infinity
    response = client.post("/mix", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 422, "guidance_scale", "finite number")


def test_uploaded_latent_is_stored_with_its_statistics(client):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((4, 8, 8)) + np.array([0.5, -0.5, 0, 1.0])[:, None, None]).astype(
        np.float32
    )

    response = upload_latent(client, array)

    assert response.status_code == 200
    entry = response.json()["latents"][0]
    assert entry["status"] == "ready" and not entry["cached"] and entry["source"] == "upload"
    meta = client.get(f"/latents/{entry['id']}").json()
    assert meta["shape"] == [4, 8, 8]
    assert meta["norm"] == pytest.approx(float(np.linalg.norm(array.astype(np.float64))), rel=1e-6)
    assert meta["channel_means"] == pytest.approx(array.reshape(4, -1).mean(axis=1), abs=1e-6)
    data = client.get(f"/latents/{entry['id']}/data")
    assert np.array_equal(load(data.content)["latent"], array)
    assert upload_latent(client, array).json()["latents"][0]["cached"] is True


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        (latent_file(np.zeros((4, 8, 8), np.float32), name="z"), "named 'latent'"),
        (latent_file(np.zeros((8, 8), np.float32)), "shape [4, H, W]"),
        (latent_file(np.zeros((3, 8, 8), np.float32)), "shape [4, H, W]"),
        (latent_file(np.full((4, 8, 8), np.nan, np.float32)), "NaN"),
        (b"\x80\x04\x95 a pickle, never unpickled", "not a safetensors file"),
    ],
)
def test_bad_latent_uploads_are_rejected(client, payload, phrase):
    response = client.post(
        "/latents", files=[("latents", ("bad.safetensors", payload, "application/octet-stream"))]
    )
    assert_problem(response, 422, phrase, "bad.safetensors")


def test_unknown_latent_and_job_ids_are_404(client):
    missing = "0" * 32
    assert_problem(client.get(f"/latents/{missing}"), 404, missing)
    assert_problem(client.get(f"/latents/{missing}/data"), 404, missing)
    assert_problem(client.get(f"/jobs/{missing}"), 404, missing)
    assert_problem(client.get(f"/images/{missing}"), 404, missing)
    assert_problem(client.post("/mix", json={"latents": [missing]}), 404, missing)


def test_malformed_ids_never_reach_storage(client):
    assert_problem(client.get("/latents/..%2F..%2Fetc"), 404, "Not Found")
    assert_problem(client.get("/latents/..secret"), 422, "latent_id")
    assert_problem(client.get("/images/ABC"), 422, "image_id")
    assert_problem(client.post("/mix", json={"latents": ["../x"]}), 422, "latents")


@pytest.fixture
def two_latents(client):
    return upload_random_latents(client, 2, seed=1)


def test_mix_of_ready_latents_queues_a_mix_job(client, two_latents):
    response = client.post(
        "/mix", json={"latents": two_latents, "weights": [[0.5, 0.5], [0.2, 0.8]]}
    )

    assert response.status_code == 202
    assert response.json()["type"] == "mix"
    assert response.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"weights": [1.0]}, "expected K = 2"),
        ({"weights": [0.5, -0.5]}, "negative"),
        ({"weights": [0.0, 0.0]}, "zero"),
        ({"method": "slerp", "weights": [[0.5, 0.5], [1.0]]}, "row 1"),
        ({"method": "bogus"}, "bogus"),
    ],
)
def test_bad_mix_requests_name_the_problem(client, two_latents, body, phrase):
    assert_problem(client.post("/mix", json={"latents": two_latents} | body), 422, phrase)


def test_non_finite_weights_are_rejected(client, two_latents):
    response = client.post(
        "/mix",
        content=json.dumps({"latents": two_latents, "weights": [float("nan"), 1.0]}),
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 422, "weights row 0, entry 0 is not finite: nan")


def test_slerp_needs_two_latents(client, two_latents):
    third = upload_latent(client, np.ones((4, 8, 8), np.float32)).json()["latents"][0]["id"]
    response = client.post("/mix", json={"latents": [*two_latents, third], "method": "slerp"})
    assert_problem(response, 422, "slerp")


def test_latents_of_different_shapes_or_models_are_not_mixed(client, two_latents):
    wide = upload_latent(client, np.ones((4, 8, 16), np.float32)).json()["latents"][0]["id"]
    assert_problem(client.post("/mix", json={"latents": [*two_latents, wide]}), 422, "shapes")


def test_mix_waits_for_pending_latents(client, two_latents):
    pending = post_images(client, png_bytes(5)).json()

    response = client.post("/mix", json={"latents": [two_latents[0], pending["latents"][0]["id"]]})

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    job = client.app.state.redis.hgetall(f"rq:job:{response.json()['id']}")
    assert job[b"status"] == b"deferred"


def test_canceling_a_queued_job(client):
    job = post_images(client, png_bytes(1)).json()["job"]

    canceled = client.post(f"/jobs/{job['id']}/cancel")

    assert canceled.status_code == 202
    assert canceled.json()["status"] == "canceled"
    seen = client.get(f"/jobs/{job['id']}").json()
    assert seen["status"] == "canceled" and seen["finished_at"] is not None
    assert_problem(client.post(f"/jobs/{job['id']}/cancel"), 409, "already ended")
    # No worker ever sees it: its end is counted by the API, once.
    assert client.app.state.redis.hget(JOBS_KEY, "invert|canceled") == b"1"


def test_a_canceled_inversion_frees_its_latents_for_a_new_request(client):
    job = post_images(client, png_bytes(1)).json()["job"]
    client.post(f"/jobs/{job['id']}/cancel")

    again = post_images(client, png_bytes(1))

    assert again.status_code == 202
    assert again.json()["job"]["id"] != job["id"]


def test_wait_returns_after_the_cap_for_unfinished_jobs(client):
    job = post_images(client, png_bytes(1)).json()["job"]
    client.app.state.settings.max_wait_s = 0.3

    response = client.get(f"/jobs/{job['id']}", params={"wait": 30})

    assert response.json()["status"] == "queued"


@pytest.fixture
def announcements_only(monkeypatch):
    """Long polls look at their job by themselves only every 60 s: within the 30 s they
    hold, only an announcement on the job's channel can wake them."""
    monkeypatch.setattr(jobs_routes, "FALLBACK_POLL_S", 60)


def _after(seconds: float, action) -> None:
    threading.Timer(seconds, action).start()


def test_a_long_poll_answers_when_its_job_is_canceled(client, announcements_only):
    job = post_images(client, png_bytes(1)).json()["job"]
    _after(0.5, lambda: client.post(f"/jobs/{job['id']}/cancel"))

    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}", params={"wait": 30})

    assert response.json()["status"] == "canceled"
    assert time.monotonic() - started < 15, "woken by the announcement, not the 30 s cap"


def test_a_long_poll_with_seen_answers_with_the_first_new_images(
    client, settings, announcements_only
):
    job = post_images(client, png_bytes(1)).json()["job"]
    redis = client.app.state.redis
    image = {"id": "a" * 32, "latent": "b" * 32, "provenance": {"weights": [1.0]}}
    # What a worker does when a batch is uploaded (the job stays queued here: no worker).
    _after(0.5, lambda: append_partial_result(redis, job["id"], [image], settings))

    started = time.monotonic()
    first = client.get(f"/jobs/{job['id']}", params={"wait": 30, "seen": 0}).json()

    assert time.monotonic() - started < 15, "woken by the announcement, not the 30 s cap"
    assert first["status"] == "queued"
    assert [entry["id"] for entry in first["result"]["images"]] == [image["id"]]
    assert first["result"]["images"][0]["url"].endswith(f"/images/{image['id']}")
    # Images beyond `seen` already there: no wait at all; `seen` without `wait`: no effect.
    again = client.get(f"/jobs/{job['id']}", params={"wait": 30, "seen": 0}).json()
    assert len(again["result"]["images"]) == 1
    assert client.get(f"/jobs/{job['id']}", params={"seen": 5}).json()["status"] == "queued"


def test_a_model_no_worker_serves_is_rejected(client):
    response = post_images(client, png_bytes(1), model="someone/other-model")
    assert_problem(response, 422, "someone/other-model", "not served")


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "redis": "ok",
        "storage": "ok",
        "workers": "no worker with a loaded model",
    }
    # An API replica's own readiness (Kubernetes' probe while workers are scaled to zero).
    own = client.get("/readyz", params={"exclude": "workers"})
    assert own.status_code == 200
    assert own.json()["checks"] == {"redis": "ok", "storage": "ok"}
    assert own.json()["workers"] == 0
    assert_problem(client.get("/readyz", params={"exclude": "redis"}), 422, "exclude")


def test_ready_means_a_live_worker_with_its_model_loaded(client, settings):
    redis = Redis.from_url(settings.redis_url)
    # A registration left by a dead RQ worker, or one still loading its model, counts not.
    redis.sadd("rq:workers", "rq:worker:dead")
    assert client.get("/readyz").status_code == 503

    publish_card(redis, TINY_CARD, "w1", ttl_s=30)
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"] == 1 and ready.json()["models"] == {"tiny": 1}

    stop_serving(redis, "w1")
    assert client.get("/readyz").status_code == 503
    publish_card(redis, TINY_CARD, "w2", ttl_s=1)  # a killed worker: its heartbeat stops
    time.sleep(1.2)
    assert client.get("/readyz").status_code == 503


def test_models_lists_the_served_models_with_their_cards(client, settings):
    redis = Redis.from_url(settings.redis_url)
    sd3 = TINY_CARD.model_copy(update={"model": "tiny-sd3", "latent_channels": 16})
    for worker in ("a", "b"):
        publish_card(redis, sd3, worker, ttl_s=30)

    models = {m["name"]: m for m in client.get("/models").json()["models"]}

    assert models["tiny"] == {
        "name": "tiny",
        "workers": 0,
        "default": True,
        "card": TINY_CARD.model_dump(mode="json"),
    }
    assert models["tiny-sd3"]["workers"] == 2 and not models["tiny-sd3"]["default"]
    assert models["tiny-sd3"]["card"]["latent_channels"] == 16


def test_uploaded_latents_are_checked_against_the_models_card(client, settings):
    redis = Redis.from_url(settings.redis_url)
    sd3 = TINY_CARD.model_copy(update={"model": "tiny-sd3", "latent_channels": 16})
    publish_card(redis, sd3, "worker", ttl_s=30)
    four, sixteen = np.ones((4, 8, 8), np.float32), np.ones((16, 8, 8), np.float32)

    refused = upload_latent(client, four, model="tiny-sd3")
    accepted = upload_latent(client, sixteen, model="tiny-sd3")

    assert_problem(refused, 422, "[16, H, W]", "got [4, 8, 8]", "tiny-sd3")
    assert accepted.status_code == 200, accepted.text
    assert_problem(upload_latent(client, sixteen), 422, "[4, H, W]", "'tiny'")


def test_without_a_card_any_channel_count_is_left_to_the_worker(client, settings):
    Redis.from_url(settings.redis_url).delete(CARDS_KEY)
    response = upload_latent(client, np.ones((16, 8, 8), np.float32))
    assert response.status_code == 200, response.text


def test_committed_openapi_schema_matches_the_app(settings):
    committed = json.loads(OPENAPI_FILE.read_text())
    assert create_app(settings).openapi() == committed, (
        "API changed: regenerate with `python -m latentmix.service.api.openapi`"
    )


def test_the_api_never_imports_torch():
    code = (
        "import sys, latentmix.service.api.app as app, latentmix.service.cli; app.create_app(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_webhooks_are_refused_without_a_signing_secret(client, two_latents):
    response = client.post(
        "/mix", json={"latents": two_latents, "webhook": "http://127.0.0.1:9/hook"}
    )
    assert_problem(response, 422, "LATENTMIX_WEBHOOK_SECRET")
    response = client.post("/mix", json={"latents": two_latents, "webhook": "ftp://x/hook"})
    assert_problem(response, 422, "webhook")


def test_sample_and_weights_are_exclusive_and_bounded(client, two_latents, settings):
    both = {"weights": [1, 1], "sample": {"count": 2}}
    assert_problem(client.post("/mix", json={"latents": two_latents} | both), 422, "not both")
    settings.max_mixes_per_request = 10
    too_many = {"latents": two_latents, "sample": {"count": 11}}
    assert_problem(client.post("/mix", json=too_many), 422, "11 mixes", "limit is 10")
    bad_subset = {"latents": two_latents, "sample": {"count": 2, "scheme": "subset", "k": 3}}
    assert_problem(client.post("/mix", json=bad_subset), 422, "subset k must be in [1, 2]")


def test_weight_rows_are_normalised_once_in_the_api(client, two_latents):
    job_id = client.post("/mix", json={"latents": two_latents, "weights": [2, 6]}).json()["id"]

    job = fetch_job(client.app.state.redis, job_id)

    assert MixRequest.model_validate(job.args[0]).weights == [[0.25, 0.75]]


def test_a_mix_answers_with_the_ids_it_will_produce(client, two_latents):
    rows = [[2, 6], [1, 3], [1, 1]]  # the first two are the same mix
    answer = client.post("/mix", json={"latents": two_latents, "weights": rows}).json()

    planned = answer["planned"]
    latent_ids = [mixed_latent_id(two_latents, w, "nin/chm") for w in ([0.25, 0.75], [0.5, 0.5])]
    # Uploaded latents carry no prompt or steps: the defaults apply ("", 50 steps).
    image_ids = [image_id(latent, "", 50, 7.5) for latent in latent_ids]
    assert [p["latent"] for p in planned] == [latent_ids[0], latent_ids[0], latent_ids[1]]
    assert [p["id"] for p in planned] == [image_ids[0], image_ids[0], image_ids[1]]
    assert [p["weights"] for p in planned] == [[0.25, 0.75], [0.25, 0.75], [0.5, 0.5]]
    assert planned[0]["url"].endswith(f"/images/{image_ids[0]}")
    request = MixRequest.model_validate(fetch_job(client.app.state.redis, answer["id"]).args[0])
    assert [row.image for row in request.rows] == [p["id"] for p in planned]


def test_a_mix_of_pending_inversions_takes_their_prompt_and_steps(client):
    form = {"prompt": "a red fox", "inversion_steps": "12"}
    pending = post_images(client, png_bytes(1), png_bytes(2), **form).json()
    inputs = [entry["id"] for entry in pending["latents"]]

    answer = client.post("/mix", json={"latents": inputs}).json()

    request = MixRequest.model_validate(fetch_job(client.app.state.redis, answer["id"]).args[0])
    assert (request.prompt, request.steps) == ("a red fox", 12)
    assert request.producers == dict.fromkeys(inputs, pending["job"]["id"])
    assert answer["planned"][0]["id"] == image_id(request.rows[0].latent, "a red fox", 12, 7.5)


def test_a_mix_of_inputs_inverted_with_other_prompts_mixes_their_prompts_row_by_row(client):
    prompts = ["a red circle", "a blue square"]
    pending = post_images(client, png_bytes(1), png_bytes(2), prompt=prompts).json()
    inputs = [entry["id"] for entry in pending["latents"]]

    answer = client.post("/mix", json={"latents": inputs, "weights": [[9, 1], [1, 9]]}).json()

    request = MixRequest.model_validate(fetch_job(client.app.state.redis, answer["id"]).args[0])
    assert (request.prompt, request.prompts) == (None, prompts)
    assert request.image(0).provenance.prompt is None
    latent = request.rows[0].latent
    assert answer["planned"][0]["id"] == image_id(latent, None, 50, 7.5, prompts=prompts)
    # A prompt given in the request is the prompt of every row, as before.
    given = client.post("/mix", json={"latents": inputs, "prompt": "a shape"}).json()
    request = MixRequest.model_validate(fetch_job(client.app.state.redis, given["id"]).args[0])
    assert (request.prompt, request.prompts) == ("a shape", None)
