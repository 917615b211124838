"""The inversion methods on the trained `shapes` model (fast lane: 5 steps, one picture,
guidance 7.5), where they can show what they are for (random weights cannot): the exact
methods are exact, null-text follows its guidance-1 pivot far better than DDIM at 7.5,
fixed-point's residual never grows with more iterations, and each latent records it."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from latentmix.worker.engine.diffusion import (
    InversionSettings,
    encode_images,
    encode_prompts,
    generate,
    invert,
)
from latentmix.worker.engine.inversion import ddim, fixed_point
from latentmix.worker.engine.models import LoadedModel, load_model
from latentmix.worker.engine.shapes.classifier import judge, load_classifier
from latentmix.worker.engine.shapes.evaluation import find_samples, to_pil, to_tensor
from latentmix.worker.engine.shapes.model import CLASSIFIER_FILE
from latentmix.worker.engine.state_mixing import mix_inverted

PICTURE = Path(__file__).parents[3] / "examples" / "shapes-red-circle.png"
PROMPT = "a red circle"
STEPS, GUIDANCE = 5, 7.5


@pytest.fixture(scope="module")
def shapes_model() -> LoadedModel:
    return load_model("shapes", device="cpu")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.open(PICTURE).convert("RGB")


def round_trip(model, picture, method: str, guidance: float = GUIDANCE, **options):
    settings = InversionSettings(steps=STEPS, guidance_scale=guidance, method=method, **options)
    result = invert(model, [picture], PROMPT, settings, measure=True)
    return result, {name: float(value[0]) for name, value in result.reconstruction.items()}


@pytest.fixture(scope="module")
def ddim_errors(shapes_model, picture) -> dict[float, dict[str, float]]:
    """DDIM's round trip at guidance 1 and 7.5. Measured: latent RMSE 0.176 / 0.557,
    pixel PSNR 34.8 / 23.4 dB."""
    return {g: round_trip(shapes_model, picture, "ddim", g)[1] for g in (1.0, GUIDANCE)}


@pytest.mark.parametrize("method", ["edict", "bdia"])
def test_exact_methods_are_exact_at_guidance_7_5(shapes_model, picture, ddim_errors, method):
    """Measured: latent RMSE 3.1e-5 (edict), 3.6e-5 (bdia); DDIM 0.557."""
    _, errors = round_trip(shapes_model, picture, method)
    assert errors["latent_rmse"] < 1e-3 and errors["pixel_psnr_db"] > 60, errors
    assert errors["latent_rmse"] < 1e-3 * ddim_errors[GUIDANCE]["latent_rmse"]


def test_null_text_at_7_5_is_far_above_ddim_and_near_its_guidance_1_pivot(
    shapes_model, picture, ddim_errors
):
    """Measured (5 steps): null-text 30.2 dB; DDIM 23.4 dB at 7.5 and 34.8 dB at 1 (the
    pivot). At 20 steps: 43.5 dB against DDIM's 17.5 (7.5) and 41.0 (1) (docs/inversion-on-
    shapes.md). Before the fix it stored phi_{i+1} as phi_i on CPU: 15.6 dB at 20 steps."""
    _, errors = round_trip(shapes_model, picture, "null-text")
    psnr = errors["pixel_psnr_db"]
    assert psnr > ddim_errors[GUIDANCE]["pixel_psnr_db"] + 5, (psnr, ddim_errors)
    assert psnr > ddim_errors[1.0]["pixel_psnr_db"] - 6, (psnr, ddim_errors)


def test_fixed_point_residual_never_grows_with_more_iterations(shapes_model, picture):
    """Each step keeps the iterate whose own residual is least, so from the same latent
    more iterations never give a larger residual; checked on the second inversion step,
    the one plain iteration does not contract on (at 20 steps its residual grows from
    0.16 to 0.47 over 8 plain iterations; docs/inversion-on-shapes.md)."""
    x0 = encode_images(shapes_model, [picture], shapes_model.default_size)
    rows = encode_prompts(shapes_model, PROMPT)
    schedule = ddim.PLAIN_SAMPLER.schedule(shapes_model, STEPS)
    (t1, a0, a1), (t2, _, a2) = list(schedule.inversion_steps())[:2]

    def noise(t):
        return lambda z: ddim.PLAIN_SAMPLER.noise(shapes_model, z, t, rows, GUIDANCE)

    with torch.inference_mode():
        x1, _ = fixed_point.solve_step(noise(t1), x0, a0, a1, 0)
        residuals = [fixed_point.solve_step(noise(t2), x1, a1, a2, k)[1][1] for k in (1, 2, 3, 5)]
    assert residuals == sorted(residuals, reverse=True), residuals


def test_fixed_point_latents_record_iterations_and_residual_per_step(shapes_model, picture):
    result, errors = round_trip(shapes_model, picture, "fixed-point", inversion_iterations=3)
    used, residual = result.settings["iterations_used"], result.settings["final_residual"]
    assert len(used) == len(residual) == STEPS
    assert all(1 <= k <= 3 for k in used)
    assert all(isinstance(r, float) and 0 <= r < 1 for r in residual), residual
    assert errors["latent_rmse"] < 1.0


@pytest.mark.parametrize("method", ["null-text", "negative-prompt"])
def test_centroids_of_null_text_and_negative_prompt_stay_on_class_at_7_5(shapes_model, method):
    """The mixing paper's appendix B: null-text latents mix with their per-step embeddings
    mixed by the same weights. The centroid of 4 red circles, inverted and generated at
    7.5, is read as a red circle (docs/inversion-on-shapes.md: the per-method sheet)."""
    circles = [to_pil(s) for s in find_samples("circle", "red", 4, seed=3)]
    settings = InversionSettings(steps=STEPS, guidance_scale=GUIDANCE, method=method)
    inverted = invert(shapes_model, circles, PROMPT, settings)
    centroid = mix_inverted(inverted, [[1.0] * len(circles)], "nin/chm", latent_state=())
    (image,) = generate(shapes_model, centroid, PROMPT, steps=STEPS, guidance_scale=GUIDANCE)

    ((label, confidence),) = judge(load_classifier(CLASSIFIER_FILE), to_tensor([image]))
    assert label == "red circle" and confidence > 0.9
