"""POST /latents' inversion method and options, and the mixing rules between methods, in
the API (TestClient, real Redis, no worker: jobs stay queued)."""

import numpy as np
import pytest
from helpers import TINY_CARD, assert_problem, png_bytes, upload_latent
from redis import Redis

from latentmix.service.core.contract import InvertRequest, MixRequest
from latentmix.service.core.jobs import fetch_job
from latentmix.service.core.model_cards import CARDS_KEY


def post_images(client, *images: bytes, **form):
    files = [("images", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/latents", files=files, data=form)


def queued_request(client, answer: dict):
    job = fetch_job(client.app.state.redis, answer["job"]["id"])
    model = InvertRequest if answer["job"]["type"] == "invert" else MixRequest
    return model.model_validate(job.args[0])


def latent_id(client, **form) -> str:
    return post_images(client, png_bytes(1), inversion_steps="4", **form).json()["latents"][0]["id"]


def test_a_method_is_queued_with_its_options_defaults_filled_in(client):
    answer = post_images(client, png_bytes(1), inversion="edict", inversion_steps="4").json()
    settings = queued_request(client, answer).settings
    assert (settings.method, settings.edict_mix, settings.steps) == ("edict", 0.93, 4)
    assert settings.options() == {"edict_mix": 0.93}


def test_latent_ids_cover_the_method_and_every_option(client):
    ids = {
        "default": latent_id(client),
        "ddim": latent_id(client, inversion="ddim"),
        "edict": latent_id(client, inversion="edict"),
        "edict, its default mix": latent_id(client, inversion="edict", edict_mix="0.93"),
        "edict 0.9": latent_id(client, inversion="edict", edict_mix="0.9"),
        "fixed-point": latent_id(client, inversion="fixed-point"),
        "fixed-point 2": latent_id(client, inversion="fixed-point", inversion_iterations="2"),
        "renoise": latent_id(client, inversion="fixed-point", renoise_average="true"),
        "null-text": latent_id(client, inversion="null-text"),
    }
    assert ids["default"] == ids["ddim"]
    assert ids["edict"] == ids["edict, its default mix"]
    distinct = {name: value for name, value in ids.items() if name not in ("ddim", "edict")}
    assert len(set(distinct.values())) == len(distinct)


def test_an_unknown_method_is_refused_naming_the_models_methods(client):
    response = post_images(client, png_bytes(1), inversion="direct-inversion")
    assert_problem(response, 422, "'direct-inversion'", ", ".join(TINY_CARD.inversion_methods))
    assert client.app.state.redis.keys("rq:job:*") == []


def test_a_method_the_models_card_does_not_list_is_refused(client, settings):
    card = TINY_CARD.model_copy(update={"inversion_methods": ("ddim", "edict")})
    Redis.from_url(settings.redis_url).hset(CARDS_KEY, "tiny", card.model_dump_json())
    assert_problem(
        post_images(client, png_bytes(1), inversion="null-text"), 422, "allowed: ddim, edict"
    )


def test_an_option_of_another_method_is_refused_naming_both(client):
    response = post_images(client, png_bytes(1), inversion="bdia", edict_mix="0.9")
    assert_problem(
        response, 422, "'edict_mix' belongs to 'edict'", "'bdia' takes: bdia_gamma, timestep_"
    )
    plain = post_images(client, png_bytes(1), inversion_iterations="3")
    assert_problem(
        plain, 422, "'inversion_iterations'", "'ddim' takes: timestep_spacing, guidance_rescale"
    )


def test_bdia_inverts_with_gamma_1_only_and_says_why(client):
    assert_problem(
        post_images(client, png_bytes(1), inversion="bdia", bdia_gamma="0.5"),
        422,
        "bdia_gamma must be 1",
        "diverges in float32",
    )
    accepted = post_images(client, png_bytes(1), inversion="bdia", bdia_gamma="1")
    assert accepted.status_code == 202, accepted.text


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"inversion": "edict", "edict_mix": "0"}, "edict_mix"),
        ({"inversion": "fixed-point", "inversion_iterations": "51"}, "inversion_iterations"),
        ({"inversion": "null-text", "null_text_iterations": "-1"}, "null_text_iterations"),
    ],
)
def test_option_values_out_of_range_name_the_field(client, form, field):
    assert_problem(post_images(client, png_bytes(1), **form), 422, field)


@pytest.mark.parametrize(
    ("seed", "form", "queued"),
    [
        (1, {}, "sample"),  # the default: one latent per job
        (2, {"measure_reconstruction": "all"}, "all"),
        (3, {"measure_reconstruction": "none"}, "none"),
        (4, {"measure_reconstruction": "true"}, "all"),  # as release 0.2 took it
        (5, {"measure_reconstruction": "false"}, "none"),
    ],
)
def test_reconstruction_is_sampled_by_default_and_measured_fully_on_request(
    client, seed, form, queued
):
    answer = post_images(client, png_bytes(seed), **form).json()
    assert queued_request(client, answer).measure_reconstruction == queued


def test_an_unknown_reconstruction_measure_is_refused_naming_the_allowed_ones(client):
    response = post_images(client, png_bytes(1), measure_reconstruction="most")
    assert_problem(response, 422, "measure_reconstruction", "sample", "all", "none", "most")


# --- mixing -------------------------------------------------------------------------------


def pending(client, seed: int, **form) -> str:
    answer = post_images(client, png_bytes(seed), inversion_steps="4", **form).json()
    return answer["latents"][0]["id"]


def test_latents_of_different_methods_are_not_mixed_and_the_answer_names_both(client):
    ddim, edict = pending(client, 1), pending(client, 2, inversion="edict")
    response = client.post("/mix", json={"latents": [ddim, edict]})
    assert_problem(response, 422, ddim, "ddim (4 steps)", edict, "edict (4 steps, edict_mix=0.93)")


def test_latents_of_different_steps_or_options_are_not_mixed(client):
    four = pending(client, 1, inversion="edict")
    eight = post_images(client, png_bytes(2), inversion="edict", inversion_steps="8").json()
    other_mix = pending(client, 3, inversion="edict", edict_mix="0.9")
    eight_id = eight["latents"][0]["id"]
    assert_problem(client.post("/mix", json={"latents": [four, eight_id]}), 422, "8 steps")
    assert_problem(client.post("/mix", json={"latents": [four, other_mix]}), 422, "edict_mix=0.9")


def test_an_uploaded_latent_mixes_as_ddim_only(client):
    upload = upload_latent(client, np.ones((4, 8, 8), np.float32)).json()["latents"][0]["id"]
    ddim, edict = pending(client, 1), pending(client, 2, inversion="edict")
    assert client.post("/mix", json={"latents": [upload, ddim]}).status_code == 202
    assert_problem(
        client.post("/mix", json={"latents": [upload, edict]}), 422, "an upload", "edict"
    )


def test_a_mix_of_one_methods_latents_is_planned_with_that_method(client):
    first, second = pending(client, 1, inversion="bdia"), pending(client, 2, inversion="bdia")
    answer = client.post("/mix", json={"latents": [first, second]}).json()
    request = MixRequest.model_validate(fetch_job(client.app.state.redis, answer["id"]).args[0])
    assert request.inversion == "bdia"
    assert request.inversion_settings == {"steps": 4, "method": "bdia", "bdia_gamma": 1.0}
    assert request.steps == 4


def test_step_bound_methods_are_generated_with_their_inversion_steps(client):
    first, second = (
        pending(client, 1, inversion="null-text"),
        pending(client, 2, inversion="null-text"),
    )
    response = client.post("/mix", json={"latents": [first, second], "steps": 5})
    assert_problem(response, 422, "null-text latents are sampled with the 4 steps", "not 5")
    ddim = [pending(client, 3), pending(client, 4)]
    assert client.post("/mix", json={"latents": ddim, "steps": 5}).status_code == 202


def test_a_ddim_mix_is_planned_as_before(client):
    inputs = [pending(client, 1), pending(client, 2)]
    answer = client.post("/mix", json={"latents": inputs}).json()
    request = MixRequest.model_validate(fetch_job(client.app.state.redis, answer["id"]).args[0])
    assert (request.inversion, request.inversion_settings) == (None, {})


def test_sampler_options_are_in_the_id_unless_neutral(client):
    plain = latent_id(client)
    assert latent_id(client, guidance_rescale="0") == plain
    assert len({plain, latent_id(client, guidance_rescale="0.7"), latent_id(
        client, timestep_spacing="trailing")}) == 3  # fmt: skip
    assert_problem(post_images(client, png_bytes(1), timestep_spacing="middle"), 422, "trailing")


def test_a_method_without_sampler_options_refuses_them(client, settings):
    card = TINY_CARD.model_copy(update={"inversion_methods": ("flow-euler", "rf-solver")})
    Redis.from_url(settings.redis_url).hset(CARDS_KEY, "tiny", card.model_dump_json())
    response = post_images(client, png_bytes(1), timestep_spacing="trailing")
    assert_problem(response, 422, "'timestep_spacing' belongs to 'ddim'", "'flow-euler' takes: no")


def test_latents_of_different_spacings_are_not_mixed_and_a_trailing_mix_keeps_it(client):
    leading, trailing = pending(client, 1), pending(client, 2, timestep_spacing="trailing")
    other = pending(client, 3, timestep_spacing="trailing")
    assert_problem(
        client.post("/mix", json={"latents": [leading, trailing]}), 422, "timestep_spacing=trailing"
    )
    answer = client.post("/mix", json={"latents": [trailing, other]}).json()
    request = MixRequest.model_validate(fetch_job(client.app.state.redis, answer["id"]).args[0])
    assert request.inversion == "ddim"
    assert request.inversion_settings["timestep_spacing"] == "trailing"
