"""The options every DDIM-type method takes, in inversion and generation alike: timestep
spacing (Lin et al., section 3.3) and guidance rescale (their eq. 15-16)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from latentmix.worker.engine.diffusion import (
    InversionSettings,
    encode_images,
    encode_prompts,
    invert,
    sample,
)
from latentmix.worker.engine.inversion import ddim
from latentmix.worker.engine.testing.random_models import SD15_SCHEDULER_CONFIG

PROMPT = "a photo of a cat"


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_the_schedule_is_the_diffusers_schedulers_for_each_spacing(tiny_model, spacing):
    theirs = DDIMScheduler(**{**SD15_SCHEDULER_CONFIG, "timestep_spacing": spacing})
    theirs.set_timesteps(10)
    ours = ddim.ddim_schedule(tiny_model, 10, spacing)
    assert ours.timesteps == tuple(int(t) for t in theirs.timesteps)
    assert ours.timesteps[0] == (999 if spacing == "trailing" else 901)


def test_a_trailing_inversion_records_its_spacing_and_generates_with_it(tiny_model, images):
    settings = InversionSettings(steps=4, guidance_scale=1.0, timestep_spacing="trailing")
    result = invert(tiny_model, images[:1], PROMPT, settings)
    assert result.settings["timestep_spacing"] == "trailing"
    assert result.settings["start_timestep"] == 999
    conditioning = encode_prompts(tiny_model, PROMPT)
    x0 = sample(tiny_model, result, conditioning, steps=4, guidance_scale=1.0)
    leading = dataclasses.replace(result, settings={**result.settings, "timestep_spacing": None})
    other = sample(tiny_model, leading, conditioning, steps=4, guidance_scale=1.0)
    clean = encode_images(tiny_model, images[:1], tiny_model.default_size)
    # the recorded spacing is the one that regenerates (relative error)
    assert float((x0 - clean).norm() / clean.norm()) < float((other - clean).norm() / clean.norm())


def test_guidance_rescale_matches_lin_et_al_eq_15_16(tiny_model):
    """phi x_rescaled + (1 - phi) x_cfg with x_rescaled = x_cfg std(x_c) / std(x_cfg), per
    row, written out here from the paper, against the family's guided output."""
    conditioning = encode_prompts(tiny_model, [PROMPT, "a dog"])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    family, phi, g = tiny_model.family, 0.7, 7.5
    with torch.inference_mode():
        ours = family.predict(tiny_model, x, 501, conditioning, g, guidance_rescale=phi)
        out_c = family.predict(tiny_model, x, 501, conditioning, 1.0)
        plain = family.predict(tiny_model, x, 501, conditioning, g)
    ratio = out_c.flatten(1).std(1) / plain.flatten(1).std(1)
    expected = phi * plain * ratio[:, None, None, None] + (1 - phi) * plain
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert (ours - plain).abs().max() > 1e-3


def test_a_rescaled_inversion_records_phi_and_regenerates_with_it(tiny_model, images):
    settings = InversionSettings(steps=4, method="edict", guidance_scale=7.5, guidance_rescale=0.7)
    result = invert(tiny_model, images[:1], PROMPT, settings, measure=True)
    assert result.settings["guidance_rescale"] == 0.7
    plain = dataclasses.replace(result, settings={**result.settings, "guidance_rescale": None})
    conditioning = encode_prompts(tiny_model, PROMPT)
    clean = encode_images(tiny_model, images[:1], tiny_model.default_size)
    error = float(result.reconstruction["latent_rmse"][0])
    x0 = sample(tiny_model, plain, conditioning, steps=4, guidance_scale=7.5)
    assert error < 1e-4 < float((x0 - clean).pow(2).mean().sqrt())


def test_ddim_records_leave_unset_sampler_options_out():
    ddim = InversionSettings(steps=4).for_method(("ddim",), "ddim")
    edict = InversionSettings(steps=4, method="edict").for_method(("edict",), "ddim")
    assert "timestep_spacing" not in ddim.id_fields()
    assert "guidance_rescale" not in edict.id_fields()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timestep_spacing": "middle"}, r"timestep_spacing\n.*'leading' or 'trailing'"),
        ({"method": "bdia", "guidance_rescale": 1.5}, r"guidance_rescale\n.*less than or equal"),
    ],
)
def test_bad_sampler_options_are_refused_before_any_compute(
    tiny_model, images, unet_calls, options, message
):
    with pytest.raises(ValueError, match=message):
        invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=2, **options))
    assert unet_calls == []


def test_flow_methods_take_no_sampler_options(tiny_sd3, images):
    settings = InversionSettings(steps=2, method="flow-euler", timestep_spacing="trailing")
    with pytest.raises(ValueError, match="'timestep_spacing' does not apply"):
        invert(tiny_sd3, images[:1], PROMPT, settings)
