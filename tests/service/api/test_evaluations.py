"""POST /evaluations and GET /evaluations/{id} in-process: what is queued, and the refusals
(no worker runs here; tests/e2e/test_experiment.py scores images for real)."""

import json

import numpy as np
from helpers import TINY_CARD, assert_problem, latent_file, png_bytes

from latentmix.service.core.augmentation_defaults import AugmentationDefaults
from latentmix.service.core.contract import EvaluateRequest
from latentmix.service.core.jobs import fetch_job
from latentmix.service.core.latents import LatentRecord, upload_key
from latentmix.service.core.model_cards import publish_card


def uploaded_latents(client, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    files = [
        (
            "latents",
            (
                f"z{i}.safetensors",
                latent_file(rng.standard_normal((4, 8, 8)).astype(np.float32)),
                "application/x",
            ),
        )
        for i in range(count)
    ]
    return [entry["id"] for entry in client.post("/latents", files=files).json()["latents"]]


def inverted_latent(client, seed: int) -> tuple[str, bytes]:
    """A latent record as an inversion publishes it, with its source image stored."""
    data = png_bytes(seed)
    storage = client.app.state.storage
    storage.put(upload_key(data), data, "application/octet-stream")
    record = LatentRecord.describe(
        f"{seed:032x}",
        np.zeros((4, 8, 8), np.float32),
        model="tiny",
        source="image",
        source_image=upload_key(data),
    )
    client.app.state.catalog.publish(record, np.zeros((4, 8, 8), np.float32))
    return record.id, data


def queued_request(client, job_id: str) -> EvaluateRequest:
    return EvaluateRequest.model_validate(fetch_job(client.app.state.redis, job_id).args[0])


def test_evaluating_a_queued_mix_job_waits_for_it_and_scores_its_planned_images(client):
    latents = uploaded_latents(client, 3)
    mix = client.post("/mix", json={"latents": latents, "weights": [[1, 1, 0], [0, 1, 1]]}).json()
    reference, data = inverted_latent(client, 1)

    response = client.post(
        "/evaluations",
        data={"job": mix["id"], "reference_latents": [reference], "label": "cat"},
        files=[("references", ("r.png", png_bytes(2), "image/png"))],
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["type"] == "evaluate" and body["status"] == "queued"
    assert fetch_job(client.app.state.redis, body["id"]).dependency_ids == [mix["id"]]
    request = queued_request(client, body["id"])
    assert request.generated == [image["id"] for image in mix["planned"]]
    assert request.references == [upload_key(data), upload_key(png_bytes(2))]
    assert request.label == "cat"
    assert client.get(f"/evaluations/{body['id']}").json()["id"] == body["id"]


def test_a_judged_evaluation_needs_no_references_but_a_model_with_a_judge(client):
    latents = uploaded_latents(client, 2)
    mix = client.post("/mix", json={"latents": latents, "weights": [[1, 1]]}).json()
    redis = client.app.state.redis
    measured = AugmentationDefaults.paper(1.0).model_copy(
        update={"judge": "shapes-classifier", "judge_labels": ("red circle",)}
    )

    publish_card(redis, TINY_CARD, "w", ttl_s=30)  # no judge
    refused = client.post("/evaluations", data={"job": mix["id"], "judge": "true"})
    publish_card(redis, TINY_CARD.model_copy(update={"augmentation": measured}), "w", ttl_s=30)
    response = client.post("/evaluations", data={"job": mix["id"], "judge": "true"})

    assert_problem(refused, 422, "has no judge")
    assert response.status_code == 202, response.text
    request = queued_request(client, response.json()["id"])
    assert request.judge and request.references == []
    assert request.generated == [image["id"] for image in mix["planned"]]


def test_evaluations_need_one_generated_set_and_some_references(client):
    reference, _ = inverted_latent(client, 3)

    assert_problem(
        client.post("/evaluations", data={"reference_latents": [reference]}),
        422,
        "'job' or 'images'",
    )
    assert_problem(client.post("/evaluations", data={"images": ["a" * 32]}), 422, "reference")
    assert_problem(
        client.post("/evaluations", data={"images": ["a" * 32], "reference_latents": [reference]}),
        404,
        "a" * 32,
    )
    assert_problem(
        client.post("/evaluations", data={"job": "b" * 32, "reference_latents": [reference]}),
        404,
        "b" * 32,
    )


def test_references_must_have_a_source_image(client):
    (uploaded,) = uploaded_latents(client, 1)
    client.app.state.storage.put("images/" + "c" * 32 + ".png", png_bytes(4), "image/png")

    response = client.post(
        "/evaluations", data={"images": ["c" * 32], "reference_latents": [uploaded]}
    )

    assert_problem(response, 422, uploaded, "no stored source image")


def test_a_broken_reference_upload_is_refused_before_queueing(client):
    client.app.state.storage.put("images/" + "d" * 32 + ".png", png_bytes(5), "image/png")

    response = client.post(
        "/evaluations",
        data={"images": ["d" * 32]},
        files=[("references", ("r.png", b"not an image", "image/png"))],
    )

    assert_problem(response, 415, "r.png")


def test_other_jobs_are_not_evaluations(client):
    mix = client.post("/mix", json={"latents": uploaded_latents(client, 2)}).json()

    assert_problem(client.get(f"/evaluations/{mix['id']}"), 404, mix["id"])


def test_an_evaluation_whose_job_expired_is_read_from_storage(client):
    job_id = "e" * 32
    stored = {"model": "tiny", "result": {"features": "clip:tiny-clip", "fid": 1.5}}
    client.app.state.storage.put(
        f"evaluations/{job_id}.json", json.dumps(stored).encode(), "application/json"
    )

    body = client.get(f"/evaluations/{job_id}").json()

    assert body["status"] == "succeeded" and body["type"] == "evaluate"
    assert body["result"] == stored["result"] and body["model"] == "tiny"


def test_an_unfinished_job_that_is_not_a_mix_cannot_be_evaluated_yet(client):
    reference, _ = inverted_latent(client, 6)
    inversion = client.post(
        "/latents", files=[("images", ("a.png", png_bytes(7), "image/png"))]
    ).json()["job"]

    response = client.post(
        "/evaluations", data={"job": inversion["id"], "reference_latents": [reference]}
    )

    assert_problem(response, 409, inversion["id"], "has not finished")


def test_evaluations_are_bounded_like_mixes(make_client):
    client = make_client(max_mixes_per_request=2, max_latents_per_mix=2)

    assert_problem(
        client.post(
            "/evaluations", data={"images": ["a" * 32] * 3, "reference_latents": ["b" * 32]}
        ),
        422,
        "LATENTMIX_MAX_MIXES_PER_REQUEST",
    )
    assert_problem(
        client.post(
            "/evaluations", data={"images": ["a" * 32], "reference_latents": ["b" * 32] * 3}
        ),
        422,
        "LATENTMIX_MAX_LATENTS_PER_MIX",
    )


def test_judge_features_need_a_model_with_a_judge(client):
    latents = uploaded_latents(client, 2)
    mix = client.post("/mix", json={"latents": latents, "weights": [[1, 1]]}).json()
    redis = client.app.state.redis
    measured = AugmentationDefaults.paper(1.0).model_copy(update={"judge": "shapes-classifier"})
    ask = {"job": mix["id"], "features": "judge"}
    reference = [("references", ("r.png", png_bytes(2), "image/png"))]

    publish_card(redis, TINY_CARD, "w", ttl_s=30)  # no judge
    refused = client.post("/evaluations", data=ask, files=reference)
    publish_card(redis, TINY_CARD.model_copy(update={"augmentation": measured}), "w", ttl_s=30)
    response = client.post("/evaluations", data=ask, files=reference)

    assert_problem(refused, 422, "features is clip or inception")
    assert response.status_code == 202, response.text
    assert queued_request(client, response.json()["id"]).features == "judge"
