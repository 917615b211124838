"""Request bodies say what they mean: a field the API does not know is refused by name,
never ignored, and the limits of one request are configurable and published (GET /limits)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_problem, latent_file, png_bytes

from latentmix.service.api.routes.latents import FORM_FIELDS

OPENAPI_FILE = Path(__file__).parents[3] / "openapi" / "openapi.json"


def upload_many_latents(client, count: int, per_request: int = 60) -> list[str]:
    """Ids of `count` random [4, 8, 8] latents, uploaded `per_request` at a time."""
    rng = np.random.default_rng(0)
    ids = []
    for start in range(0, count, per_request):
        parts = [
            (
                "latents",
                (
                    f"{i}.safetensors",
                    latent_file(rng.standard_normal((4, 8, 8)).astype(np.float32)),
                    "x/y",
                ),
            )
            for i in range(start, min(count, start + per_request))
        ]
        response = client.post("/latents", files=parts)
        assert response.status_code == 200, response.text
        ids += [entry["id"] for entry in response.json()["latents"]]
    return ids


def image_parts(count: int = 1):
    return [("images", (f"{i}.png", png_bytes(i), "image/png")) for i in range(count)]


# --- unknown fields ---------------------------------------------------------------------------


def test_a_misspelled_mix_field_is_refused_naming_it_and_the_allowed_ones(client):
    body = {"latents": ["a" * 32, "b" * 32], "wieghts": [1, 2]}

    problem = assert_problem(
        client.post("/mix", json=body),
        422,
        "unknown field 'wieghts'",
        "allowed: latents, weights, method, prompt, guidance_scale, steps, sample, webhook",
    )
    assert problem["errors"] == [{"field": "body", "message": problem["detail"][len("body: ") :]}]


def test_model_on_mix_is_refused_not_ignored(client):
    body = {"latents": ["a" * 32, "b" * 32], "model": "other/model"}

    assert_problem(client.post("/mix", json=body), 422, "unknown field 'model'")


def test_an_unknown_sample_field_is_refused_where_it_is(client):
    body = {"latents": ["a" * 32, "b" * 32], "sample": {"count": 2, "sed": 7}}

    assert_problem(
        client.post("/mix", json=body),
        422,
        "body.sample: unknown field 'sed'; allowed: count, scheme, alpha, k, seed",
    )


@pytest.mark.parametrize(
    ("form", "extra_files", "phrase"),
    [
        ({"promt": "a cat"}, [], "unknown field 'promt'"),
        ({"steps": "4"}, [], "unknown field 'steps'"),
        ({}, [("image", ("x.png", png_bytes(9), "image/png"))], "unknown field 'image'"),
    ],
)
def test_an_unknown_form_field_is_refused_and_nothing_is_queued(client, form, extra_files, phrase):
    response = client.post("/latents", files=image_parts() + extra_files, data=form)

    assert_problem(response, 422, phrase, "allowed: " + ", ".join(FORM_FIELDS))
    assert client.app.state.redis.keys("rq:job:*") == []


def test_the_form_fields_checked_are_those_the_schema_declares():
    schema = json.loads(OPENAPI_FILE.read_text())["components"]["schemas"]
    assert set(FORM_FIELDS) == set(schema["Body_create_latents"]["properties"])


def test_the_schema_forbids_unknown_fields_in_every_request_body():
    schema = json.loads(OPENAPI_FILE.read_text())
    components = schema["components"]["schemas"]
    for name in ("MixCreate", "SampleSpec"):
        assert components[name]["additionalProperties"] is False, name


# --- how many latents one mix takes -----------------------------------------------------------


def test_a_subset_pool_of_thousands_of_latents_is_accepted(make_client):
    """The augment case: a class of 300 images (more than release 0.1's 256)."""
    client = make_client()
    ids = upload_many_latents(client, 300)

    body = {"latents": ids, "sample": {"count": 3, "scheme": "subset", "k": 5, "seed": 1}}
    response = client.post("/mix", json=body)

    assert response.status_code == 202, response.text
    planned = response.json()["planned"]
    assert len(planned) == 3
    assert all(sum(w > 0 for w in image["weights"]) == 5 for image in planned)


def test_more_latents_than_the_limit_are_refused_naming_limit_and_count(make_client):
    client = make_client(max_latents_per_mix=3)
    body = {"latents": [f"{i:032x}" for i in range(4)]}

    assert_problem(
        client.post("/mix", json=body),
        422,
        "4 latents in one mix",
        "the limit is 3",
        "LATENTMIX_MAX_LATENTS_PER_MIX",
    )


def test_the_schema_sets_no_static_cap_on_the_latents_of_a_mix():
    schema = json.loads(OPENAPI_FILE.read_text())
    latents = schema["components"]["schemas"]["MixCreate"]["properties"]["latents"]
    assert "maxItems" not in latents
    assert "GET /limits" in latents["description"]


def test_limits_lists_every_request_limit_as_configured(make_client):
    client = make_client(
        max_latents_per_mix=5000,
        max_mixes_per_request=7,
        max_files=3,
        max_upload_bytes=1000,
        max_request_bytes=2000,
        max_image_pixels=640 * 480,
        max_wait_s=5,
        max_morph_frames=33,
    )

    assert client.get("/limits").json() == {
        "max_latents_per_mix": 5000,
        "max_mixes_per_request": 7,
        "max_files": 3,
        "max_upload_bytes": 1000,
        "max_request_bytes": 2000,
        "max_image_pixels": 640 * 480,
        "min_image_size": 64,
        "max_image_size": 2048,
        "max_prompt_chars": 2000,
        "max_steps": 500,
        "max_guidance": 30.0,
        "max_wait_s": 5.0,
        "max_morph_frames": 33,
    }


def test_the_default_latents_per_mix_is_4096(client):
    assert client.get("/limits").json()["max_latents_per_mix"] == 4096


# --- what the schema promises, the API accepts --------------------------------------------------


def test_the_schema_requires_a_file_part_and_non_empty_weight_rows():
    schema = json.loads(OPENAPI_FILE.read_text())
    upload = schema["paths"]["/latents"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["anyOf"] == [{"required": ["images"]}, {"required": ["latents"]}]
    weights = schema["components"]["schemas"]["MixCreate"]["properties"]["weights"]["anyOf"]
    row, rows = weights[0], weights[1]
    assert row["minItems"] == 1 and row["items"]["minimum"] == 0
    assert rows["minItems"] == 1 and rows["items"]["minItems"] == 1


def test_weights_and_sample_together_are_refused_without_a_value_error_prefix(client):
    body = {"latents": ["a" * 32], "weights": [1], "sample": {"count": 1}}
    problem = assert_problem(client.post("/mix", json=body), 422)
    assert problem["detail"] == "body: give either weights or sample, not both"
