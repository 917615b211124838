"""Request bodies say what they mean: a field the API does not know is refused by name,
never ignored."""

import json
from pathlib import Path

import pytest
from helpers import assert_problem, png_bytes

from latentmix.service.api.routes.latents import FORM_FIELDS

OPENAPI_FILE = Path(__file__).parents[3] / "openapi" / "openapi.json"


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
