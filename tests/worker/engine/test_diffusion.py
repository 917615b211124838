"""DDIM inversion and generation on the tiny seeded model."""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np
import pytest
import torch
from helpers import relative_error
from PIL import Image

from latentmix.worker.engine.diffusion import (
    InversionSettings,
    decode_latents,
    encode_images,
    encode_prompts,
    generate,
    invert,
    sample,
)
from latentmix.worker.engine.families import stable_diffusion
from latentmix.worker.engine.images import prepare_images
from latentmix.worker.engine.inversion.ddim import ddim_schedule
from latentmix.worker.engine.models import PromptCache, load_model
from latentmix.worker.engine.results import Inverted

PROMPT = "a photo of a cat"


def round_trip(model, images, steps: int, guidance_scale: float = 1.0) -> tuple[float, dict]:
    """Invert then sample back; the relative error against the images' VAE latents x0."""
    settings = InversionSettings(steps=steps, guidance_scale=guidance_scale)
    result = invert(model, images, PROMPT, settings)
    embeddings = encode_prompts(model, [PROMPT] * len(images))
    x0 = sample(model, result.latent, embeddings, steps=steps, guidance_scale=guidance_scale)
    return relative_error(x0, encode_images(model, images, result.settings["size"])), result


@pytest.fixture(scope="module")
def round_trip_error(tiny_model, images):
    """Round-trip error without guidance, memoised per step count."""

    @cache
    def error(steps: int) -> float:
        return round_trip(tiny_model, images[:2], steps)[0]

    return error


# --- images and latents -------------------------------------------------------------------


def test_prepare_images_crops_to_a_square_in_minus_one_to_one(images):
    pixels = prepare_images(images, 48)
    assert pixels.shape == (3, 3, 48, 48)
    assert pixels.dtype == torch.float32
    assert -1.0 <= pixels.min() < 0.0 < pixels.max() <= 1.0


def test_prepare_images_converts_grayscale_to_rgb():
    gray = Image.new("L", (40, 24), color=128)
    assert prepare_images([gray], 16).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("size", [60, 0, 4])
def test_prepare_images_rejects_sizes_not_a_multiple_of_8(images, size):
    with pytest.raises(ValueError, match=f"got {size}"):
        prepare_images(images, size)


@pytest.mark.parametrize("size", [64, 48])
def test_latents_are_an_eighth_of_the_image_size(tiny_model, images, size):
    result = invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=2, size=size))
    assert result.latent.shape == (1, 4, size // 8, size // 8)
    assert result.latent.dtype == torch.float32
    assert result.latent.device == torch.device("cpu")


def test_inversion_settings_record_what_was_run(tiny_model, images):
    result = invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=10))
    assert result.settings == {
        "steps": 10,
        "guidance_scale": 7.5,
        "size": 64,
        "model": "tiny",
        "scheduler": "DDIMScheduler",
        "start_timestep": 901,
    }


def test_invert_returns_the_ddim_latent_with_nothing_aside(tiny_model, images):
    result = invert(tiny_model, images[:2], PROMPT, InversionSettings(steps=2))
    assert isinstance(result, Inverted)
    assert (result.method, result.aux, len(result)) == ("ddim", {}, 2)
    second = result.rows(1, 2)
    assert torch.equal(second.latent, result.latent[1:2])
    assert second.settings == result.settings


def test_generate_from_an_inverted_equals_generate_from_its_latent(tiny_model, images):
    result = invert(tiny_model, images[:2], PROMPT, InversionSettings(steps=3))
    from_inverted = generate(tiny_model, result, PROMPT, steps=3)
    from_tensor = generate(tiny_model, result.latent, PROMPT, steps=3)
    for ours, theirs in zip(from_inverted, from_tensor, strict=True):
        assert ours.tobytes() == theirs.tobytes()
    embeddings = encode_prompts(tiny_model, PROMPT)
    first_row = sample(tiny_model, result.rows(0, 1), embeddings, steps=3)
    assert torch.equal(first_row, sample(tiny_model, result.latent[:1], embeddings, steps=3))


def test_records_name_the_method_only_when_it_is_not_ddim():
    assert "method" not in InversionSettings().id_fields()
    assert "method" not in InversionSettings(method="ddim").id_fields()
    assert InversionSettings(method="edict").id_fields()["method"] == "edict"


def test_invert_rejects_an_unknown_method_naming_the_allowed_ones(tiny_model, images):
    with pytest.raises(
        ValueError, match=r"'nope'.*'ddim' \(models predicting epsilon or v_prediction\)"
    ):
        invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=2, method="nope"))


@pytest.fixture
def fresh_cache_model(tiny_model):
    """The tiny model with an empty prompt cache of its own."""
    return dataclasses.replace(tiny_model, prompt_cache=PromptCache(8))


@pytest.fixture
def encoded_texts(monkeypatch) -> list[list[str]]:
    """Every batch of texts that reaches the text encoder."""
    encoded: list[list[str]] = []
    original = stable_diffusion._encode_texts

    def record(model, texts):
        encoded.append(list(texts))
        return original(model, texts)

    monkeypatch.setattr(stable_diffusion, "_encode_texts", record)
    return encoded


def test_encode_prompts_encodes_each_distinct_prompt_once(fresh_cache_model, encoded_texts):
    embeddings = encode_prompts(fresh_cache_model, ["a cat", "a dog", "a cat"])
    assert encoded_texts == [["a cat", "a dog", ""]]
    assert embeddings.cond.shape[0] == 3
    assert embeddings.uncond.shape[0] == 1
    assert torch.equal(embeddings.cond[0], embeddings.cond[2])
    assert not torch.equal(embeddings.cond[0], embeddings.cond[1])


def test_cached_prompts_skip_the_text_encoder_and_give_identical_embeddings(
    fresh_cache_model, encoded_texts
):
    first = encode_prompts(fresh_cache_model, ["a cat", "a dog"])
    again = encode_prompts(fresh_cache_model, ["a dog", "a cat", "a dog"])
    assert encoded_texts == [["a cat", "a dog", ""]]
    assert torch.equal(again.cond[1], first.cond[0])
    assert torch.equal(again.cond[0], first.cond[1])
    assert torch.equal(again.uncond, first.uncond)
    assert fresh_cache_model.prompt_cache.hits == 3  # "a dog", "a cat", ""


def test_cached_embeddings_equal_freshly_encoded_ones(tiny_model, fresh_cache_model):
    cached = encode_prompts(fresh_cache_model, ["a red car"] * 2)
    uncached_model = dataclasses.replace(tiny_model, prompt_cache=PromptCache(0))
    fresh = encode_prompts(uncached_model, ["a red car"])
    torch.testing.assert_close(cached.cond[:1], fresh.cond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.uncond, fresh.uncond, rtol=1e-5, atol=1e-6)
    assert len(uncached_model.prompt_cache) == 0


def test_only_new_prompts_reach_the_text_encoder(fresh_cache_model, encoded_texts):
    encode_prompts(fresh_cache_model, ["a cat"])
    encode_prompts(fresh_cache_model, ["a cat", "a blue tree"])
    assert encoded_texts == [["a cat", ""], ["a blue tree"]]


def test_prompt_cache_drops_the_least_recently_used_prompt():
    cache = PromptCache(2)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.ones(1))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", torch.ones(1))
    assert "a" in cache and "c" in cache and "b" not in cache
    assert (cache.hits, cache.misses) == (1, 0)


def test_generation_encodes_its_prompt_once_per_worker(fresh_cache_model, encoded_texts):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model = dataclasses.replace(fresh_cache_model, max_batch_size=2)
    generate(model, latents, PROMPT, steps=2)
    generate(model, latents[:1], PROMPT, steps=2)
    assert encoded_texts == [[PROMPT, ""]]


def test_vae_runs_in_batches_of_vae_batch_size(tiny_model, images, monkeypatch):
    model = dataclasses.replace(tiny_model, vae_batch_size=2)
    vae = model.pipe.vae
    batches: list[tuple[str, int]] = []
    for name in ("encode", "decode"):
        original = getattr(vae, name)

        def spy(x, *args, _name=name, _original=original, **kwargs):
            batches.append((_name, x.shape[0]))
            return _original(x, *args, **kwargs)

        monkeypatch.setitem(vae.__dict__, name, spy)
    x0 = encode_images(model, images, 64)
    decode_latents(model, x0)
    assert batches == [("encode", 2), ("encode", 1), ("decode", 2), ("decode", 1)]


# --- the timestep convention --------------------------------------------------------------


def test_schedule_matches_ddim_scheduler_timesteps(tiny_model):
    schedule = ddim_schedule(tiny_model, 50)
    assert schedule.timesteps[:3] == (981, 961, 941)
    assert schedule.timesteps[-1] == 1
    alphas = tiny_model.pipe.scheduler.alphas_cumprod
    assert schedule.final_alpha == pytest.approx(float(alphas[0]))  # set_alpha_to_one=False
    inversion = list(schedule.inversion_steps())
    assert [t for t, _, _ in inversion] == list(reversed(schedule.timesteps))
    assert inversion[0][1] == schedule.final_alpha  # starts from x0 at "t = -1"
    assert inversion[-1][2] == pytest.approx(float(alphas[981]))  # ends where sampling starts


def test_zero_unet_round_trip_is_exact(tiny_model, images, replace_unet):
    """eps = 0 reduces DDIM to scaling by sqrt(a_to / a_from): any timestep mismatch between
    inversion and generation (the off-by-one) shows up as an error of 1e-4 or more."""
    replace_unet(lambda x, t, text: torch.zeros_like(x))
    error, result = round_trip(tiny_model, images[:2], steps=50, guidance_scale=7.5)
    assert error < 1e-6
    x0 = encode_images(tiny_model, images[:2], 64)
    a_start = float(tiny_model.pipe.scheduler.alphas_cumprod[981])
    a_final = float(tiny_model.pipe.scheduler.final_alpha_cumprod)
    expected = x0 * math.sqrt(a_start / a_final)
    assert relative_error(result.latent, expected) < 1e-6


def test_round_trip_is_exact_when_eps_depends_only_on_timestep_and_prompt(
    tiny_model, images, replace_unet
):
    """Inversion evaluates eps at the same timestep as the sampling step it undoes, so an eps
    that ignores x cancels exactly, guidance included. Evaluating it one step off would not."""

    def eps(x, t, text):
        per_row = torch.sin(float(t) / 50.0 + 100 * text.float().mean(dim=(1, 2)))
        return 0.05 * per_row.view(-1, 1, 1, 1).expand_as(x).to(x.dtype)

    replace_unet(eps)
    error, _ = round_trip(tiny_model, images[:2], steps=20, guidance_scale=7.5)
    assert error < 1e-5


def test_inversion_calls_the_unet_at_the_sampling_timesteps_reversed(
    tiny_model, images, unet_calls
):
    invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=5, guidance_scale=1.0))
    assert [c["timestep"] for c in unet_calls] == [1, 201, 401, 601, 801]
    unet_calls.clear()
    generate(tiny_model, torch.zeros(1, 4, 8, 8), PROMPT, steps=5, guidance_scale=1.0)
    assert [c["timestep"] for c in unet_calls] == [801, 601, 401, 201, 1]


# --- round trips with the real tiny UNet ---------------------------------------------------


def test_round_trip_error_falls_with_more_steps(round_trip_error):
    """Measured (no guidance, 2 test images): relative error 0.151 at 10 steps, 0.093 at 50."""
    assert round_trip_error(10) < 0.35
    assert round_trip_error(50) < 0.8 * round_trip_error(10)


@pytest.mark.slow
def test_round_trip_at_200_steps_is_close(round_trip_error):
    """Measured: relative error 0.031 at 200 steps (0.093 at 50; with guidance 7.5: 0.22)."""
    assert round_trip_error(200) < 0.1
    assert round_trip_error(200) < 0.7 * round_trip_error(50)


def test_sampling_matches_the_diffusers_pipeline(tiny_model):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = [PROMPT, "a red car"]
    for guidance_scale in (1.0, 7.5):
        ours = sample(
            tiny_model,
            latents,
            encode_prompts(tiny_model, prompts),
            steps=10,
            guidance_scale=guidance_scale,
        )
        reference = tiny_model.pipe(
            prompt=prompts,
            latents=latents.clone(),
            num_inference_steps=10,
            guidance_scale=guidance_scale,
            height=64,
            width=64,
            output_type="latent",
        ).images
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)


# --- batching -----------------------------------------------------------------------------


def test_batched_and_one_by_one_runs_agree(tiny_model, images, unet_calls):
    prompts = [PROMPT, "a red car", "a blue tree"]
    settings = InversionSettings(steps=4, guidance_scale=7.5)
    batched_model = dataclasses.replace(tiny_model, max_batch_size=2, inversion_batch_size=2)
    batched = invert(batched_model, images, prompts, settings)
    assert [c["batch"] for c in unet_calls] == [4] * 4 + [2] * 4  # CFG doubles each chunk
    singles = [
        invert(tiny_model, [im], [p], settings).latent
        for im, p in zip(images, prompts, strict=True)
    ]
    one_by_one = torch.cat(singles)
    torch.testing.assert_close(batched.latent, one_by_one, rtol=1e-4, atol=1e-5)

    embeddings = encode_prompts(tiny_model, prompts)
    batched_x0 = sample(batched_model, batched.latent, embeddings, steps=4)
    single_x0 = [
        sample(tiny_model, batched.latent[i : i + 1], embeddings.rows(i, i + 1), steps=4)
        for i in range(3)
    ]
    torch.testing.assert_close(batched_x0, torch.cat(single_x0), rtol=1e-4, atol=1e-5)

    batched_images = generate(batched_model, batched.latent, prompts, steps=4)
    single_images = [
        generate(tiny_model, batched.latent[i : i + 1], prompts[i], steps=4)[0] for i in range(3)
    ]
    for ours, theirs in zip(batched_images, single_images, strict=True):
        difference = np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)
        assert np.abs(difference).max() <= 1


def test_no_unconditional_pass_without_guidance(tiny_model, images, unet_calls):
    invert(tiny_model, images[:2], PROMPT, InversionSettings(steps=3, guidance_scale=1.0))
    assert [c["batch"] for c in unet_calls] == [2, 2, 2]


# --- guidance and prompts matter ----------------------------------------------------------


def test_guidance_and_prompt_change_the_inverted_latent(tiny_model, images):
    """Measured: relative change 0.50 (guidance 7.5 vs 1) and 0.49 (another prompt)."""

    def latents(prompt: str, guidance_scale: float) -> torch.Tensor:
        settings = InversionSettings(steps=10, guidance_scale=guidance_scale)
        return invert(tiny_model, images[:1], prompt, settings).latent

    base = latents(PROMPT, 7.5)
    assert relative_error(latents(PROMPT, 7.5), base) == 0.0  # deterministic
    assert relative_error(latents(PROMPT, 1.0), base) > 0.1
    assert relative_error(latents("a red car", 7.5), base) > 0.1


def test_guidance_and_prompt_change_the_generated_latent(tiny_model, images):
    """Measured from an inverted latent: relative change 0.39 (guidance) and 0.38 (prompt)."""
    settings = InversionSettings(steps=10)
    latents = invert(tiny_model, images[:1], PROMPT, settings).latent

    def x0(prompt: str, guidance_scale: float) -> torch.Tensor:
        embeddings = encode_prompts(tiny_model, [prompt])
        return sample(tiny_model, latents, embeddings, steps=10, guidance_scale=guidance_scale)

    base = x0(PROMPT, 7.5)
    assert relative_error(x0(PROMPT, 1.0), base) > 0.1
    assert relative_error(x0("a red car", 7.5), base) > 0.1


# --- generation output --------------------------------------------------------------------


@pytest.mark.parametrize("latent_side", [8, 6])
def test_generated_images_have_the_latent_size_times_8(tiny_model, latent_side):
    latents = torch.randn(2, 4, latent_side, latent_side)
    generated = generate(tiny_model, latents, PROMPT, steps=2)
    assert [im.size for im in generated] == [(8 * latent_side, 8 * latent_side)] * 2
    assert all(im.mode == "RGB" for im in generated)


def test_decode_latents_returns_one_image_per_row(tiny_model):
    decoded = decode_latents(tiny_model, torch.zeros(3, 4, 8, 8))
    assert len(decoded) == 3
    assert decoded[0].size == (64, 64)


# --- progress and cancellation ------------------------------------------------------------


def test_progress_counts_unet_steps_up_to_the_total(tiny_model, images):
    reports: list[tuple[int, int]] = []
    model = dataclasses.replace(tiny_model, max_batch_size=2, inversion_batch_size=2)
    invert(model, images, PROMPT, InversionSettings(steps=3), lambda d, t: reports.append((d, t)))
    assert reports == [(done, 6) for done in range(1, 7)]  # 3 images = 2 chunks x 3 steps

    reports.clear()
    generate(model, torch.zeros(1, 4, 8, 8), PROMPT, steps=4, progress=lambda *r: reports.append(r))
    assert reports == [(done, 4) for done in range(1, 5)]


class Cancelled(Exception):
    pass


def test_exception_from_progress_stops_the_run(tiny_model, images, unet_calls):
    def cancel_at_two(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=10), cancel_at_two)
    assert len(unet_calls) == 2

    unet_calls.clear()
    with pytest.raises(Cancelled):
        generate(tiny_model, torch.zeros(1, 4, 8, 8), PROMPT, steps=10, progress=cancel_at_two)
    assert len(unet_calls) == 2


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "bad"),
    [
        ({"steps": 0}, "0"),
        ({"steps": 501}, "501"),  # the contract's MAX_STEPS
        ({"guidance_scale": -1.0}, "-1.0"),
        ({"guidance_scale": 31.0}, "31.0"),
        ({"guidance_scale": float("nan")}, "nan"),
        ({"size": 60}, "60"),
    ],
)
def test_invert_rejects_bad_settings_naming_the_value(tiny_model, images, settings, bad):
    with pytest.raises(ValueError, match=bad):
        invert(tiny_model, images[:1], PROMPT, InversionSettings(**settings))


def test_invert_rejects_a_prompt_count_that_does_not_match(tiny_model, images):
    with pytest.raises(ValueError, match="2 prompts for a batch of 3"):
        invert(tiny_model, images, [PROMPT, PROMPT], InversionSettings(steps=2))


@pytest.mark.parametrize(
    ("latents", "bad"),
    [
        (torch.zeros(1, 3, 8, 8), r"\(1, 3, 8, 8\)"),
        (torch.zeros(4, 8, 8), r"\(4, 8, 8\)"),
        (torch.full((1, 4, 8, 8), float("nan")), "finite"),
    ],
)
def test_generate_rejects_latents_that_do_not_fit_the_model(tiny_model, latents, bad):
    with pytest.raises(ValueError, match=bad):
        generate(tiny_model, latents, PROMPT, steps=2)


def test_generate_rejects_a_prompt_count_that_does_not_match(tiny_model):
    with pytest.raises(ValueError, match="3 prompts for a batch of 2"):
        generate(tiny_model, torch.zeros(2, 4, 8, 8), [PROMPT] * 3, steps=2)


@pytest.mark.parametrize("steps", [0, 1001, 2.5])
def test_generate_rejects_bad_step_counts(tiny_model, steps):
    with pytest.raises(ValueError, match=str(steps)):
        generate(tiny_model, torch.zeros(1, 4, 8, 8), PROMPT, steps=steps)


# Half-precision weights, as on CUDA, run on the CPU too: the relative error of the inverted
# latents and the mean absolute pixel error of the images against float32 weights.
LOW_PRECISION_ERRORS = {"float16": (0.02, 2.0), "bfloat16": (0.1, 8.0)}


@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION_ERRORS))
def test_half_precision_weights_keep_the_latent_math_in_float32(
    tiny_model, tiny_model_dir, images, dtype
):
    half = load_model("tiny", device="cpu", dtype=dtype, cache_dir=tiny_model_dir.parent)
    assert half.pipe.unet.dtype == half.pipe.vae.dtype == getattr(torch, dtype)
    settings = InversionSettings(steps=10, guidance_scale=3.0, size=64)
    exact = invert(tiny_model, images, PROMPT, settings).latent
    approximate = invert(half, images, PROMPT, settings).latent
    assert approximate.dtype == torch.float32
    latent_error, pixel_error = LOW_PRECISION_ERRORS[dtype]
    assert ((approximate - exact).norm() / exact.norm()).item() < latent_error

    def pixels(model) -> np.ndarray:
        rendered = generate(model, exact, PROMPT, steps=10, guidance_scale=3.0)
        return np.stack([np.asarray(image, np.float32) for image in rendered])

    assert np.abs(pixels(half) - pixels(tiny_model)).mean() < pixel_error
