"""Each inversion method through the service: POST /latents with `inversion`, the record's
reconstruction error and state, mixes of one method's latents, cross-method mixes refused,
and an exact method's latent regenerating its input's VAE round trip."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import assert_problem, png_bytes, wait_for
from PIL import Image
from safetensors.numpy import load

from latentmix.client import LatentMixClient
from latentmix.service.cli.main import main as latentmix

pytestmark = pytest.mark.e2e

STEPS = 4
PROMPT = "a photo of a cat"
# Each method's aux tensors and their shapes on tiny (64 px: 4 x 8 x 8 latents).
STATE = {
    "ddim": {},
    "fixed-point": {},
    "edict": {"y": [4, 8, 8]},
    "bdia": {"previous": [4, 8, 8]},
    "negative-prompt": {},
    "null-text": {"uncond_embeddings": [STEPS, 77, 32]},
}


@pytest.fixture(scope="module")
def api(service_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=60) as client:
        yield client


# Methods exact by construction: their round trip is measured only when asked.
EXACT = ("edict", "bdia")


def invert(api, seeds: list[int], guidance: float = 7.5, **form) -> list[str]:
    return [entry["id"] for entry in invert_job(api, seeds, guidance, **form)[0]["latents"]]


def invert_job(api, seeds: list[int], guidance: float = 7.5, **form) -> tuple[dict, dict]:
    """POST /latents's answer and its ended job."""
    files = [("images", (f"i{s}.png", png_bytes(s), "image/png")) for s in seeds]
    data = {"inversion_steps": STEPS, "guidance_scale": guidance, "prompt": PROMPT, **form}
    response = api.post("/latents", files=files, data=data)
    assert response.status_code == 202, response.text
    done = wait_for(api, response.json()["job"]["id"])
    assert done["status"] == "succeeded", done
    return response.json(), done


def mix(api, latents: list[str], weights: list[float], guidance: float = 7.5) -> dict:
    body = {"latents": latents, "weights": weights, "guidance_scale": guidance}
    response = api.post("/mix", json=body)
    assert response.status_code == 202, response.text
    done = wait_for(api, response.json()["id"])
    assert done["status"] == "succeeded", done
    return done


def picture(api, url: str) -> np.ndarray:
    response = api.get(url, follow_redirects=True)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), np.int16)


@pytest.mark.parametrize("method", list(STATE))
def test_each_method_inverts_reports_its_error_and_mixes_with_itself(api, method):
    first, second = invert(api, [31, 32], inversion=method)

    record = api.get(f"/latents/{first}").json()
    assert record["inversion"] == method
    assert record["aux"] == STATE[method]
    expected_bytes = sum(
        int(np.prod(shape)) * (2 if method == "null-text" else 4)
        for shape in STATE[method].values()
    )
    assert record["aux_bytes"] == expected_bytes
    errors = record["reconstruction"]
    if method in EXACT:  # nothing measured by default: the round trip is exact
        assert errors is None
    else:  # one latent of the two is the job's measured sample
        sample, other = (first, second) if errors else (second, first)
        errors = api.get(f"/latents/{sample}").json()["reconstruction"]
        assert errors["latent_rmse"] >= 0 and errors["pixel_max_error"] >= 0
        assert errors["sample_of"] == 2
        assert api.get(f"/latents/{other}").json()["reconstruction"] is None
    stored = load(api.get(f"/latents/{first}/data").content)
    assert {k.removeprefix("aux.") for k in stored if k != "latent"} == set(STATE[method])

    done = mix(api, [first, second], [0.5, 0.5])
    (image,) = done["result"]["images"]
    mixed = api.get(f"/latents/{image['latent']}").json()
    assert mixed["source"] == "mix" and mixed["aux"] == STATE[method]
    assert picture(api, f"/images/{image['id']}").shape == (64, 64, 3)


def test_reconstruction_can_be_skipped(api):
    (latent,) = invert(api, [33], measure_reconstruction="false")
    assert api.get(f"/latents/{latent}").json()["reconstruction"] is None


def test_by_default_one_latent_per_job_is_measured_and_said_to_be_a_sample(api):
    answer, done = invert_job(api, [41, 42, 43])
    ids = [entry["id"] for entry in answer["latents"]]
    sample = done["result"]["reconstruction"]
    assert sample["measure"] == "sample" and sample["of"] == 3
    (measured,) = sample["measured"]  # the first of the job's last inversion batch
    for latent in ids:
        errors = api.get(f"/latents/{latent}").json()["reconstruction"]
        if latent == measured:
            assert errors["sample_of"] == 3 and errors["latent_rmse"] >= 0
        else:
            assert errors is None


@pytest.mark.parametrize("method", ["ddim", "edict"])
def test_measuring_every_latent_is_opt_in(api, method):
    answer, done = invert_job(api, [44, 45], inversion=method, measure_reconstruction="all")
    ids = [entry["id"] for entry in answer["latents"]]
    assert done["result"]["reconstruction"] == {"measure": "all", "measured": ids, "of": 2}
    for latent in ids:
        errors = api.get(f"/latents/{latent}").json()["reconstruction"]
        assert errors["sample_of"] is None and errors["latent_rmse"] >= 0


def test_a_cross_method_mix_is_refused_naming_both(api):
    (ddim,) = invert(api, [34])
    (edict,) = invert(api, [34], inversion="edict")
    response = api.post("/mix", json={"latents": [ddim, edict]})
    assert_problem(response, 422, ddim, "ddim", edict, "edict")


@pytest.mark.parametrize("method", ["edict", "bdia"])
def test_an_exact_methods_latent_at_weight_1_regenerates_the_inputs_vae_round_trip(
    api, method, service_stack
):
    """Mixed alone at weight 1 (nin/chm keeps a single latent up to rounding), the latent
    and its state regenerate the input's VAE round trip within one 8-bit level: the
    reconstruction the worker measured says so, and the mix's image shows it."""
    (latent,) = invert(api, [35], guidance=1.0, inversion=method, measure_reconstruction="all")
    errors = api.get(f"/latents/{latent}").json()["reconstruction"]
    assert errors["pixel_max_error"] <= 1, errors

    done = mix(api, [latent], [1.0], guidance=1.0)
    regenerated = picture(api, f"/images/{done['result']['images'][0]['id']}")
    assert np.abs(regenerated - vae_round_trip(service_stack, png_bytes(35))).max() <= 1


def vae_round_trip(service_stack, png: bytes) -> np.ndarray:
    """The picture the tiny model's VAE makes of the input (encode, then decode)."""
    from latentmix.worker.engine.diffusion import decode_latents, encode_images
    from latentmix.worker.engine.models import load_model

    model = load_model("tiny", device="cpu", cache_dir=service_stack.settings.data_dir / "models")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    (decoded,) = decode_latents(model, encode_images(model, [image], model.default_size))
    return np.asarray(decoded, np.int16)


def test_the_client_inverts_with_a_method_and_its_options(service_url):
    with LatentMixClient(service_url) as lm:
        (latent,) = lm.invert(
            [png_bytes(36)],
            prompt=PROMPT,
            inversion_steps=STEPS,
            inversion="fixed-point",
            inversion_options={"inversion_iterations": 2, "renoise_average": True},
        )
        info = lm.get_latent(latent)
    assert info.inversion == "fixed-point"
    assert (info.settings["inversion_iterations"], info.settings["renoise_average"]) == (2, True)
    assert info.reconstruction["latent_rmse"] >= 0


def test_augment_inverts_with_the_method_asked_for(service_url, image_tree, tmp_path):
    out = tmp_path / "out"
    args = [
        "augment", str(image_tree), "--out", str(out), "--url", service_url,
        "--steps", str(STEPS), "--inversion-steps", str(STEPS), "--guidance-scale", "1",
        "--no-progress", "--per-class", "1", "--inversion", "edict",
        "--inversion-option", "edict_mix=0.9",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        latentmix(args)
    assert exit_.value.code == 0
    line = json.loads((out / "provenance.jsonl").read_text().splitlines()[0])
    parent = line["inputs"][0]["latent"]
    with httpx.Client(base_url=service_url) as client:
        record = client.get(f"/latents/{parent}").json()
    assert (record["inversion"], record["settings"]["edict_mix"]) == ("edict", 0.9)
