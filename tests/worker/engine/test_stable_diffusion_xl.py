"""The SDXL family on the built-in `tiny-sdxl`: its card, the two text encoders' conditioning
with pooled embeddings and added time ids, generation against StableDiffusionXLPipeline, and
DDIM-type inversion with numeric expectations."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from helpers import relative_error

from latentmix.worker.engine import diffusion
from latentmix.worker.engine.families import family_for_pipeline_class
from latentmix.worker.engine.families.stable_diffusion_xl import TIME_IDS
from latentmix.worker.engine.inversion import INVERSION_METHODS, default_inversion, methods_for
from latentmix.worker.engine.inversion.ddim import DDIM
from latentmix.worker.engine.models import load_model

PROMPT = "a photo of a cat"
EPS_METHODS = ("ddim", "fixed-point", "edict", "bdia", "negative-prompt")


@pytest.fixture(scope="module")
def x0(tiny_sdxl, images) -> torch.Tensor:
    return diffusion.encode_images(tiny_sdxl, images[:2], 64)


@pytest.fixture(scope="module")
def conditioning(tiny_sdxl):
    return diffusion.encode_prompts(tiny_sdxl, [PROMPT, PROMPT])


@torch.inference_mode()
def round_trip_error(model, x0, conditioning, steps, guidance_scale, method=DDIM) -> float:
    """Invert then sample back; relative error against the VAE latents x0."""
    inverted = method.invert(model, x0, conditioning, steps, guidance_scale, None)
    back = method.sample(model, inverted, conditioning, steps, guidance_scale, None)
    return relative_error(back, x0)


# --- the model and its card ---------------------------------------------------------------


def test_tiny_sdxl_card_describes_an_eps_model_with_the_ddim_type_methods(tiny_sdxl):
    card = tiny_sdxl.card
    assert card.family == "stable-diffusion-xl"
    assert (card.latent_channels, card.vae_scale_factor, card.default_size) == (4, 8, 64)
    assert card.default_guidance == 5.0
    assert card.prediction_type == "epsilon" and card.scheduler == "DDIMScheduler"
    assert card.inversion_methods == EPS_METHODS and card.t5 is None
    assert family_for_pipeline_class("StableDiffusionXLPipeline") is tiny_sdxl.family
    assert methods_for(tiny_sdxl.card) == EPS_METHODS
    assert default_inversion(tiny_sdxl.card).name == "ddim"
    assert not card.attention_interpolation and card.pooled_text_embedding


def test_tiny_sdxl_is_a_few_mb_with_a_text_time_unet(tiny_sdxl, tiny_model_dir):
    folder = tiny_model_dir.parent / "tiny-sdxl"
    weights = sorted(folder.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert sum(w.stat().st_size for w in weights) < 10_000_000
    assert tiny_sdxl.pipe.unet.config.addition_embed_type == "text_time"
    assert tiny_sdxl.pipe.vae.config.force_upcast


def test_a_real_sdxl_is_1024_px_by_its_unet_sample_size(tiny_sdxl):
    """native size = UNet sample_size (SDXL base: 128) x vae_scale_factor 8."""
    unet = SimpleNamespace(config=SimpleNamespace(sample_size=128))
    pipe = SimpleNamespace(unet=unet, vae_scale_factor=8)
    assert tiny_sdxl.family.native_size(pipe) == 1024


def test_a_half_precision_load_keeps_the_vae_in_float32(tiny_sdxl, tiny_model_dir, images):
    """SDXL's VAE overflows in float16 (`force_upcast`): it is loaded in float32 (the same
    latents as a float32 load), the UNet in the requested precision."""
    half = load_model("tiny-sdxl", device="cpu", dtype="bfloat16", cache_dir=tiny_model_dir.parent)
    assert half.pipe.vae.dtype == torch.float32 and half.pipe.unet.dtype == torch.bfloat16
    x0 = diffusion.encode_images(half, images[:1], 64)
    torch.testing.assert_close(
        x0, diffusion.encode_images(tiny_sdxl, images[:1], 64), rtol=0, atol=1e-6
    )


# --- conditioning ---------------------------------------------------------------------------


def test_prompts_give_both_encoders_states_and_the_second_ones_pooled_embedding(tiny_sdxl):
    conditioning = diffusion.encode_prompts(tiny_sdxl, [PROMPT, "a red car"])
    embeds, _, pooled, _ = tiny_sdxl.pipe.encode_prompt(
        [PROMPT, "a red car"], device="cpu", do_classifier_free_guidance=False
    )
    assert conditioning.cond.shape == (2, 77, 64)  # 32 + 32 channels side by side
    assert conditioning.pooled.shape == (2, 32)
    # The same encoders in other batch shapes: equal up to float32 rounding (1.5e-8 measured).
    torch.testing.assert_close(conditioning.cond, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(conditioning.pooled, pooled, rtol=0, atol=1e-6)
    # SDXL base says force_zeros_for_empty_prompt: the unconditional pair is zeros.
    assert not conditioning.uncond.any() and not conditioning.uncond_pooled.any()


def test_time_ids_are_the_image_size_crop_origin_and_target_size(tiny_sdxl):
    ids = tiny_sdxl.family.time_ids(tiny_sdxl, torch.zeros(1, 4, 16, 12))
    assert ids.tolist() == [[128.0, 96.0, 0.0, 0.0, 128.0, 96.0]]


def test_time_ids_carried_in_the_conditioning_reach_the_unet(tiny_sdxl, conditioning):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    derived = tiny_sdxl.family.predict(tiny_sdxl, x, 501, conditioning, 5.0)
    own = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).expand(2, -1)
    same = dataclasses.replace(conditioning, extra={TIME_IDS: own})
    other = dataclasses.replace(conditioning, extra={TIME_IDS: own * 2})
    torch.testing.assert_close(tiny_sdxl.family.predict(tiny_sdxl, x, 501, same, 5.0), derived)
    assert not torch.equal(tiny_sdxl.family.predict(tiny_sdxl, x, 501, other, 5.0), derived)


# --- generation against diffusers -----------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
def test_generation_equals_the_sdxl_pipeline_from_the_same_latent(tiny_sdxl, size):
    """The same DDIM scheduler settings, guidance off and on, at the native size and twice it
    (the time ids follow the size). Measured max difference 1.5e-5 on values up to ~35."""
    side = size // 8
    latents = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(0))
    prompts = [PROMPT, "a red car"]
    assert isinstance(tiny_sdxl.pipe, StableDiffusionXLPipeline)
    for guidance_scale in (1.0, 5.0):
        ours = diffusion.sample(
            tiny_sdxl,
            latents,
            diffusion.encode_prompts(tiny_sdxl, prompts),
            steps=10,
            guidance_scale=guidance_scale,
        )
        reference = tiny_sdxl.pipe(
            prompt=prompts,
            latents=latents.clone(),
            num_inference_steps=10,
            guidance_scale=guidance_scale,
            height=size,
            width=size,
            output_type="latent",
        ).images
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)


# --- inversion ------------------------------------------------------------------------------


def test_ddim_round_trip_error_falls_as_steps_grow(tiny_sdxl, x0, conditioning):
    """Without guidance, 2 images, relative error against the VAE latents (values up to
    0.14): measured 1.07e-2 / 8.6e-3 / 4.6e-3 at 10 / 20 / 50 steps (with guidance 5:
    1.65e-2 / 1.39e-2 / 7.5e-3)."""
    errors = [round_trip_error(tiny_sdxl, x0, conditioning, n, 1.0) for n in (10, 50)]
    assert errors[0] < 0.02
    assert errors[1] < 0.6 * errors[0]


def test_a_noise_estimate_that_ignores_x_gives_an_exact_round_trip(
    tiny_sdxl, x0, conditioning, monkeypatch
):
    """eps = f(t, text, pooled, time ids) cancels exactly between inversion and generation,
    guidance included; measured 2.3e-6 relative at 20 guided steps (float32 rounding)."""

    def forward(sample, timestep, encoder_hidden_states, *args, added_cond_kwargs, **kwargs):
        text = encoder_hidden_states.float().mean(dim=(1, 2)) + added_cond_kwargs[
            "text_embeds"
        ].float().mean(dim=1)
        time = added_cond_kwargs["time_ids"].float().mean(dim=1) / 64
        per_row = torch.sin(float(timestep) / 50.0 + 100 * text + time)
        return (0.05 * per_row.view(-1, 1, 1, 1).expand_as(sample).to(sample.dtype),)

    monkeypatch.setitem(tiny_sdxl.pipe.unet.__dict__, "forward", forward)
    assert round_trip_error(tiny_sdxl, x0, conditioning, 20, 5.0) < 1e-5


@pytest.mark.parametrize("name", EPS_METHODS)
def test_every_eps_method_round_trips_on_sdxl(tiny_sdxl, x0, conditioning, name):
    """Measured relative error at 10 steps with guidance 5 (2 images): ddim 1.7e-2,
    fixed-point 1.3e-5, edict 1.6e-6, bdia 2.2e-7, negative-prompt 1.1e-2 (guidance 1 in
    effect)."""
    assert round_trip_error(tiny_sdxl, x0, conditioning, 10, 5.0, INVERSION_METHODS[name]) < 0.03


def test_batched_inversion_and_generation_equal_one_by_one(tiny_sdxl, images):
    prompts = [PROMPT, "a red car", "a blue tree"]
    settings = diffusion.InversionSettings(steps=4, guidance_scale=5.0)
    batched_model = dataclasses.replace(tiny_sdxl, max_batch_size=2, inversion_batch_size=2)
    batched = diffusion.invert(batched_model, images, prompts, settings).latent
    singles = torch.cat(
        [
            diffusion.invert(tiny_sdxl, [im], [p], settings).latent
            for im, p in zip(images, prompts, strict=True)
        ]
    )
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-6)
    embeddings = diffusion.encode_prompts(tiny_sdxl, prompts)
    together = diffusion.sample(batched_model, batched, embeddings, steps=4, guidance_scale=5.0)
    alone = [
        diffusion.sample(
            tiny_sdxl, batched[i : i + 1], embeddings.rows(i, i + 1), steps=4, guidance_scale=5.0
        )
        for i in range(3)
    ]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_guidance_changes_the_inverted_latent(tiny_sdxl, images):
    def latent(guidance_scale: float) -> torch.Tensor:
        settings = diffusion.InversionSettings(steps=10, guidance_scale=guidance_scale)
        return diffusion.invert(tiny_sdxl, images[:1], "a red car", settings).latent

    assert relative_error(latent(5.0), latent(1.0)) > 1e-2  # measured 5.4e-2
