"""The SD 3 family on the built-in `tiny-sd3`: its card, encoders, and the two flow inversion
methods (reversed Euler and RF-Solver) with numeric expectations (inversion.md section 6)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from latentmix.worker.engine import diffusion
from latentmix.worker.engine.families import family_for_pipeline_class
from latentmix.worker.engine.images import prepare_images
from latentmix.worker.engine.inversion import default_inversion, get_inversion, methods_for
from latentmix.worker.engine.inversion.flow_euler import FLOW_EULER, euler_step, flow_schedule
from latentmix.worker.engine.inversion.rf_solver import RF_SOLVER
from latentmix.worker.engine.models import load_model
from latentmix.worker.engine.testing.random_models import TINY_SD3

PROMPT = "a photo of a cat"
CLIP_TOKENS = 77  # the first 77 rows of the joint sequence are CLIP's; T5's follow


@pytest.fixture(scope="module")
def x0(tiny_sd3, images) -> torch.Tensor:
    return diffusion.encode_images(tiny_sd3, images[:1], 64)


@pytest.fixture(scope="module")
def conditioning(tiny_sd3):
    return diffusion.encode_prompts(tiny_sd3, [PROMPT])


def round_trip_error(model, method, x0, conditioning, steps, guidance_scale) -> float:
    inverted = method.invert(model, x0, conditioning, steps, guidance_scale, None)
    back = method.sample(model, inverted, conditioning, steps, guidance_scale, None)
    return float((back - x0).abs().max())


# --- the model and its card ---------------------------------------------------------------


def test_tiny_sd3_card_describes_a_16_channel_flow_model_without_t5(tiny_sd3):
    card = tiny_sd3.card
    assert card.family == "stable-diffusion-3"
    assert (card.latent_channels, card.vae_scale_factor, card.default_size) == (16, 8, 64)
    assert card.default_guidance == 4.5
    assert card.inversion_methods == ("flow-euler", "rf-solver")
    assert card.prediction_type == "flow_prediction"
    assert card.scheduler == "FlowMatchEulerDiscreteScheduler"
    assert card.t5 is False
    assert not card.attention_interpolation and card.pooled_text_embedding
    description = tiny_sd3.describe()
    assert json.loads(json.dumps(description)) == description


def test_the_sd3_family_is_chosen_by_pipeline_class(tiny_sd3):
    assert family_for_pipeline_class("StableDiffusion3Pipeline") is tiny_sd3.family
    assert methods_for(tiny_sd3.card) == ("flow-euler", "rf-solver")
    assert default_inversion(tiny_sd3.card) is FLOW_EULER


def test_tiny_sd3_is_a_few_mb_and_reloads_bit_identical_without_t5(tiny_sd3, tiny_model_dir):
    """The reload trap (inversion.md section 6): a pipeline saved without T5 only loads when
    text_encoder_3 and tokenizer_3 are passed as None, which the family does."""
    folder = tiny_model_dir.parent / "tiny-sd3"
    weights = sorted(folder.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
    }
    assert sum(w.stat().st_size for w in weights) < 10_000_000
    again = load_model("tiny-sd3", device="cpu", cache_dir=tiny_model_dir.parent, t5=True)
    assert again.card.t5 is False  # tiny-sd3 has no T5 to load
    saved = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    state = again.pipe.transformer.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert torch.equal(saved["proj_out.weight"], tiny_sd3.pipe.transformer.proj_out.weight)
    assert TINY_SD3.transformer["num_layers"] == 1


def test_prompts_give_clip_then_zero_t5_rows_and_pooled_embeddings(tiny_sd3):
    conditioning = diffusion.encode_prompts(tiny_sd3, ["a red car", "a dog"])
    assert conditioning.cond.shape == (2, CLIP_TOKENS + 256, 64)
    assert conditioning.uncond.shape == (1, CLIP_TOKENS + 256, 64)
    assert conditioning.pooled.shape == (2, 64) and conditioning.uncond_pooled.shape == (1, 64)
    assert torch.count_nonzero(conditioning.cond[:, CLIP_TOKENS:]) == 0  # no T5: zeros
    assert not torch.equal(conditioning.pooled[0], conditioning.pooled[1])
    again = diffusion.encode_prompts(tiny_sd3, ["a dog"])  # from the prompt cache
    assert torch.equal(again.cond[0], conditioning.cond[1])
    assert torch.equal(again.pooled[0], conditioning.pooled[1])


def test_latents_are_shifted_and_scaled_vae_means(tiny_sd3, images):
    vae = tiny_sd3.pipe.vae
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (0.0609, 1.5305)
    x0 = diffusion.encode_images(tiny_sd3, images[:1], 64)
    assert x0.shape == (1, 16, 8, 8)
    with torch.inference_mode():
        mean = vae.encode(prepare_images(images[:1], 64)).latent_dist.mean
    torch.testing.assert_close(x0, (mean - 0.0609) * 1.5305)
    decoded = diffusion.decode_latents(tiny_sd3, x0)
    assert decoded[0].size == (64, 64)


# --- the flow methods ---------------------------------------------------------------------


def test_ddim_for_sd3_is_refused_naming_the_familys_methods(tiny_sd3, tiny_model):
    with pytest.raises(ValueError, match="'ddim'") as info:
        get_inversion("ddim", tiny_sd3.card)
    assert "'tiny-sd3' supports ['flow-euler', 'rf-solver']" in str(info.value)
    with pytest.raises(ValueError, match="'tiny' supports \\['ddim'"):
        get_inversion("rf-solver", tiny_model.card)
    with pytest.raises(ValueError, match="steps must be an integer in \\[1, 1000\\]"):
        FLOW_EULER.check(tiny_sd3, 0)


def test_euler_generation_step_equals_the_flow_match_scheduler_step(tiny_sd3):
    """Bit for bit: x + (sigma_{i+1} - sigma_i) v, in float32 like the scheduler."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(tiny_sd3.pipe.scheduler.config)
    scheduler.set_timesteps(10)
    schedule = flow_schedule(tiny_sd3, 10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=generator)
    steps = list(schedule.sampling_steps())
    assert len(steps) == 10
    for t, (sigma_at, sigma_to) in zip(scheduler.timesteps, steps, strict=True):
        assert schedule.timestep(sigma_at) == float(t)
        v = torch.randn(2, 16, 8, 8, generator=generator)
        theirs = scheduler.step(v, t, x, return_dict=False)[0]
        ours = euler_step(lambda x, sigma, v=v: v, x, sigma_at, sigma_to)
        assert torch.equal(ours, theirs)
        x = theirs


def test_generation_equals_the_sd3_pipeline_from_the_same_latent(tiny_sd3, conditioning):
    """The engine's sampler (guided, Euler) against StableDiffusion3Pipeline(latents=...):
    measured max difference 0 (same batches, same float32 steps)."""
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = diffusion.sample(tiny_sd3, noise, conditioning, steps=4, guidance_scale=4.5)
    with torch.inference_mode():
        theirs = tiny_sd3.pipe(
            prompt_embeds=conditioning.cond,
            pooled_prompt_embeds=conditioning.pooled,
            negative_prompt_embeds=conditioning.uncond,
            negative_pooled_prompt_embeds=conditioning.uncond_pooled,
            latents=noise,
            num_inference_steps=4,
            guidance_scale=4.5,
            output_type="latent",
        ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", [FLOW_EULER, RF_SOLVER], ids=lambda m: m.name)
def test_a_velocity_that_ignores_x_gives_an_exact_round_trip(
    tiny_sd3, x0, conditioning, method, monkeypatch
):
    """v = f(T): every step then adds exactly what the matching inversion step removed;
    measured max error 1.8e-7 (flow-euler) and 3.0e-7 (rf-solver) at 6 guided steps: float32
    rounding of latents up to ~2."""

    def forward(hidden_states, timestep, *args, **kwargs):
        t = timestep.float().view(-1, 1, 1, 1) / 1000
        return (torch.sin(7 * t) * torch.ones_like(hidden_states),)

    monkeypatch.setitem(tiny_sd3.pipe.transformer.__dict__, "forward", forward)
    error = round_trip_error(tiny_sd3, method, x0, conditioning, 6, 4.5)
    assert error < 1e-6


def test_flow_euler_round_trip_error_falls_as_steps_grow(tiny_sd3, x0, conditioning):
    """Inversion then generation without guidance reconstructs the VAE latent (values up to
    ~2.1); reversed Euler is first order, so the error halves as steps double. Measured max
    error at 2 / 4 / 8 / 16 steps: 1.07e-4 / 4.8e-5 / 2.2e-5 / 1.0e-5 (the inverted latent
    moves ~0.019 from x0 with the x0.01 output layer). Evaluating at the step's own timestep
    instead of the sampling step's was ~8x worse here (8.2e-5 at 40 steps with guidance)."""
    errors = [round_trip_error(tiny_sd3, FLOW_EULER, x0, conditioning, n, 1.0) for n in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.6 * errors[1] and errors[1] < 0.6 * errors[0]
    assert errors[0] < 2e-4 and errors[2] < 4e-5


def test_rf_solver_round_trip_is_within_1e5_at_5_steps(tiny_sd3, x0, conditioning):
    """Second order: measured 1.6e-6 with guidance 4.5 (inversion.md: <= 1.9e-6); reversed
    Euler at the same 5 steps misses by 3.8e-5."""
    assert round_trip_error(tiny_sd3, RF_SOLVER, x0, conditioning, 5, 4.5) <= 1e-5


@pytest.mark.parametrize("method", [FLOW_EULER, RF_SOLVER], ids=lambda m: m.name)
def test_batched_inversion_equals_one_by_one(tiny_sd3, images, method):
    batch = diffusion.encode_images(tiny_sd3, images[:2], 64)
    conditioning = diffusion.encode_prompts(tiny_sd3, [PROMPT, "a red car"])
    together = method.invert(tiny_sd3, batch, conditioning, 3, 4.5, None).latent
    for row in range(2):
        alone = method.invert(
            tiny_sd3, batch[row : row + 1], conditioning.rows(row, row + 1), 3, 4.5, None
        ).latent
        torch.testing.assert_close(together[row : row + 1], alone, rtol=0, atol=1e-6)


def test_guidance_changes_the_inverted_latent(tiny_sd3, x0):
    conditioning = diffusion.encode_prompts(tiny_sd3, ["a red car"])
    unguided = FLOW_EULER.invert(tiny_sd3, x0, conditioning, 3, 1.0, None).latent
    guided = FLOW_EULER.invert(tiny_sd3, x0, conditioning, 3, 4.5, None).latent
    assert (guided - unguided).abs().max() > 1e-3  # measured 3.3e-3


def test_invert_and_generate_through_the_engine(tiny_sd3, images):
    settings = diffusion.InversionSettings(steps=3, guidance_scale=4.5, method="rf-solver")
    seen: list[tuple[int, int]] = []
    inverted = diffusion.invert(
        tiny_sd3, images[:2], PROMPT, settings, progress=lambda d, t: seen.append((d, t))
    )
    assert inverted.method == "rf-solver" and inverted.latent.shape == (2, 16, 8, 8)
    assert inverted.settings["start_sigma"] == 1.0
    assert seen[-1] == (3, 3)
    pictures = diffusion.generate(tiny_sd3, inverted, PROMPT, steps=3, guidance_scale=4.5)
    assert [p.size for p in pictures] == [(64, 64)] * 2
    # A bare tensor (a mix) is sampled with the family's default method, flow-euler.
    mixed = diffusion.generate(tiny_sd3, inverted.latent.mean(0, keepdim=True), PROMPT, steps=2)
    assert mixed[0].size == (64, 64)


def test_sizes_and_latents_off_the_transformers_patches_are_refused(tiny_sd3, tiny_model, images):
    """SD 3 cuts the latent into 2x2 patches: a side must be a multiple of 8 x 2 = 16 pixels
    (72 px failed deep in the transformer before the card said so)."""
    assert (tiny_sd3.card.size_multiple, tiny_model.card.size_multiple) == (16, 8)
    settings = diffusion.InversionSettings(steps=2, size=72, method="flow-euler")
    with pytest.raises(ValueError, match="multiple of 16 pixels, got 72"):
        diffusion.invert(tiny_sd3, images[:1], PROMPT, settings)
    with pytest.raises(ValueError, match="multiples of 2"):
        diffusion.generate(tiny_sd3, torch.zeros(1, 16, 9, 9), PROMPT, steps=2)
    assert diffusion.encode_images(tiny_model, images[:1], 72).shape == (1, 4, 9, 9)
