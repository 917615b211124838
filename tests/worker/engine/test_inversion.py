"""The inversion registry and the DDIM step against diffusers' scheduler."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler
from helpers import TINY_CARD

from latentmix.service.core.model_card import PREDICTS_FLOW
from latentmix.worker.engine.inversion import (
    INVERSION_METHODS,
    InversionMethod,
    get_inversion,
    methods_for,
)
from latentmix.worker.engine.inversion.ddim import DDIM, ddim_schedule, ddim_step
from latentmix.worker.engine.testing.random_models import SD15_SCHEDULER_CONFIG

EPS_METHODS = ("ddim", "fixed-point", "edict", "bdia", "negative-prompt", "null-text")
FLOW_METHODS = ("flow-euler", "rf-solver")


def test_get_inversion_finds_ddim_for_stable_diffusion(tiny_model):
    assert get_inversion("ddim", tiny_model.card) is DDIM
    assert methods_for(tiny_model.card) == EPS_METHODS


def test_an_unknown_method_names_the_allowed_ones_and_the_models_they_need(tiny_model):
    with pytest.raises(ValueError, match="'direct-inversion'") as info:
        get_inversion("direct-inversion", tiny_model.card)
    assert "'ddim' (models predicting epsilon or v_prediction)" in str(info.value)
    assert "'null-text' (models predicting epsilon or v_prediction without a pooled" in str(
        info.value
    )


def test_a_method_the_model_cannot_run_names_what_it_needs_and_the_models_methods(
    tiny_model, monkeypatch
):
    spec = dataclasses.replace(DDIM.spec, name="rf-euler", needs=PREDICTS_FLOW)
    flow_only = dataclasses.replace(DDIM, spec=spec)
    monkeypatch.setitem(INVERSION_METHODS, "rf-euler", flow_only)
    with pytest.raises(ValueError, match="'rf-euler'") as info:
        get_inversion("rf-euler", tiny_model.card)
    assert "works with models predicting flow_prediction" in str(info.value)
    assert "'tiny' supports ['ddim', 'fixed-point'" in str(info.value)


@pytest.mark.parametrize(
    ("capabilities", "methods"),
    [
        ({"prediction_type": "v_prediction"}, EPS_METHODS),
        ({"prediction_type": "epsilon", "pooled_text_embedding": True}, EPS_METHODS[:-1]),
        ({"prediction_type": "flow_prediction", "pooled_text_embedding": True}, FLOW_METHODS),
    ],
)
def test_a_cards_methods_follow_its_capabilities_not_its_family_name(capabilities, methods):
    """A family the registry has never heard of gets the methods its card's capabilities
    meet: adding a family touches no method."""
    card = TINY_CARD.model_copy(update={"family": "some-new-family", **capabilities})
    assert methods_for(card) == methods


def test_every_registered_method_is_filed_under_its_own_name():
    assert all(isinstance(m, InversionMethod) for m in INVERSION_METHODS.values())
    assert all(name == m.name for name, m in INVERSION_METHODS.items())


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_the_diffusers_scheduler_step(tiny_model, prediction_type, steps):
    """Each step of the engine (its v -> eps conversion, then ddim_step) gives what
    DDIMScheduler.step (eta = 0) gives from the same latent and model output, up to float32
    rounding (diffusers' coefficients are float32, the engine's float64): measured at most
    1.4e-6 absolute, 3.4e-7 relative, on values up to ~4. Over 50 steps of v-prediction
    (inversion.md section 7) every step stays within 1e-6 + 1e-6 relative as well."""
    scheduler = DDIMScheduler(**{**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    model = dataclasses.replace(tiny_model, pipe=SimpleNamespace(scheduler=scheduler))
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    for t, a_from, a_to in ddim_schedule(model, steps).sampling_steps():
        output = torch.randn(2, 4, 8, 8, generator=generator)
        theirs = scheduler.step(output, t, x, eta=0.0).prev_sample
        ours = ddim_step(x, model.family.to_noise(model, output, x, t), a_from, a_to)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        x = theirs
