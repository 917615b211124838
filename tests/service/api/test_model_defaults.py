"""Per-model defaults and checks: the API reads them from the card of the model a request
names (guidance, size multiple, latent channels), and refuses to mix latents of different
models. No worker runs: jobs stay queued, their requests are read back."""

import numpy as np
import pytest
from helpers import TINY_CARD, assert_problem, png_bytes, upload_latent
from redis import Redis

from latentmix.service.core.augmentation_defaults import AugmentationDefaults
from latentmix.service.core.jobs import fetch_job, queue_name
from latentmix.service.core.model_cards import publish_card

SD3_CARD = TINY_CARD.model_copy(
    update={
        "model": "tiny-sd3",
        "family": "stable-diffusion-3",
        "latent_channels": 16,
        "size_multiple": 16,
        "default_guidance": 4.5,
        "prediction_type": "flow_prediction",
        "inversion_methods": ("flow-euler", "rf-solver"),
    }
)


@pytest.fixture
def redis(client, settings):
    """The tiny model (configured) and tiny-sd3, each served by a live worker."""
    redis = Redis.from_url(settings.redis_url)
    publish_card(redis, TINY_CARD, "tiny-worker", ttl_s=30)
    publish_card(redis, SD3_CARD, "sd3-worker", ttl_s=30)
    return redis


def invert_request(client, redis, **form) -> dict:
    files = [("images", ("a.png", png_bytes(1), "image/png"))]
    response = client.post("/latents", files=files, data=form)
    assert response.status_code == 202, response.text
    return fetch_job(redis, response.json()["job"]["id"]).args[0]


def sixteen_channel_latents(client, count: int) -> list[str]:
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((16, 8, 8)).astype(np.float32) for _ in range(count)]
    return [upload_latent(client, a, model="tiny-sd3").json()["latents"][0]["id"] for a in arrays]


def test_an_inversion_without_guidance_gets_the_model_cards_default(client, redis):
    sd3 = invert_request(client, redis, model="tiny-sd3")
    tiny = invert_request(client, redis)
    chosen = invert_request(client, redis, model="tiny-sd3", guidance_scale="2.0")

    assert sd3["settings"]["guidance_scale"] == 4.5
    assert tiny["settings"]["guidance_scale"] == 7.5
    assert chosen["settings"]["guidance_scale"] == 2.0


def test_an_inversion_without_size_runs_at_the_models_default_size(client, redis):
    # None in the request: the worker inverts at its model's default size (the card's).
    assert invert_request(client, redis, model="tiny-sd3")["settings"]["size"] is None
    assert invert_request(client, redis, model="tiny-sd3", size="128")["settings"]["size"] == 128


def test_a_size_off_the_models_latent_grid_is_refused_naming_the_multiple(client, redis):
    files = [("images", ("a.png", png_bytes(1), "image/png"))]
    response = client.post("/latents", files=files, data={"model": "tiny-sd3", "size": "72"})

    assert_problem(response, 422, "size 72", "multiple of 16", "'tiny-sd3'")
    assert (
        client.post("/latents", files=files, data={"model": "tiny-sd3", "size": "80"}).status_code
        == 202
    )


def test_an_uploaded_latent_must_fit_the_models_patches(client, redis):
    odd = np.ones((16, 9, 9), np.float32)  # 72 px: not a whole number of 2x2 patches

    response = upload_latent(client, odd, model="tiny-sd3")

    assert_problem(response, 422, "9x9", "multiple of 2", "'tiny-sd3'")
    assert upload_latent(client, np.ones((4, 9, 9), np.float32)).status_code == 200  # SD: any


def test_a_mix_without_guidance_gets_the_inputs_models_default(client, redis):
    latents = sixteen_channel_latents(client, 2)

    job = client.post("/mix", json={"latents": latents}).json()
    chosen = client.post("/mix", json={"latents": latents, "guidance_scale": 1.0}).json()

    assert job["model"] == "tiny-sd3"
    assert fetch_job(redis, job["id"]).args[0]["guidance_scale"] == 4.5
    assert fetch_job(redis, chosen["id"]).args[0]["guidance_scale"] == 1.0


def test_a_card_with_augmentation_settings_sets_each_passs_guidance(client, redis):
    measured = AugmentationDefaults(
        prompt_template="a {class}", inversion_guidance=1.5, generation_guidance=2.5
    )
    publish_card(redis, SD3_CARD.model_copy(update={"augmentation": measured}), "sd3", ttl_s=30)
    latents = sixteen_channel_latents(client, 2)

    inversion = invert_request(client, redis, model="tiny-sd3")
    mix = client.post("/mix", json={"latents": latents}).json()
    morph = client.post("/morph", json={"keyframes": latents, "frames": 3}).json()

    assert inversion["settings"]["guidance_scale"] == 1.5
    assert fetch_job(redis, mix["id"]).args[0]["guidance_scale"] == 2.5
    assert fetch_job(redis, morph["id"]).args[0]["guidance_scale"] == 2.5


def test_a_morph_without_guidance_gets_the_keyframes_models_default(client, redis):
    keyframes = sixteen_channel_latents(client, 2)

    job = client.post("/morph", json={"keyframes": keyframes, "frames": 3}).json()

    assert job["model"] == "tiny-sd3"
    assert fetch_job(redis, job["id"]).args[0]["guidance_scale"] == 4.5


def test_mixing_latents_of_two_models_is_refused_naming_both(client, redis):
    sd3_latent = sixteen_channel_latents(client, 1)[0]
    tiny_latent = upload_latent(client, np.ones((4, 8, 8), np.float32)).json()["latents"][0]["id"]

    response = client.post("/mix", json={"latents": [tiny_latent, sd3_latent]})

    assert_problem(
        response,
        422,
        "different models",
        "'tiny' (stable-diffusion)",
        "'tiny-sd3' (stable-diffusion-3)",
    )
    assert redis.llen(f"rq:queue:{queue_name('tiny-sd3')}") == 0
