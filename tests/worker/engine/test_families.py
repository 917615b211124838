"""Model families: the Stable Diffusion family of the tiny model, and the choice at load."""

from __future__ import annotations

import json

import pytest

from latentmix.service.core.model_card import ModelCard
from latentmix.worker.engine.families import family_for_pipeline_class, family_of


def test_tiny_model_card_describes_a_stable_diffusion_model(tiny_model):
    card = tiny_model.card
    assert card.family == "stable-diffusion"
    assert (card.latent_channels, card.vae_scale_factor, card.default_size) == (4, 8, 64)
    assert card.inversion_methods == (
        "ddim",
        "fixed-point",
        "edict",
        "bdia",
        "negative-prompt",
        "null-text",
    )
    assert card.default_guidance == 7.5
    assert card.prediction_type == "epsilon"


def test_model_card_is_json_and_is_what_describe_reports(tiny_model):
    description = tiny_model.describe()
    assert json.loads(json.dumps(description)) == description
    assert ModelCard.model_validate_json(json.dumps(description)) == tiny_model.card


def test_the_family_is_chosen_by_pipeline_class(tiny_model):
    assert family_of(tiny_model.pipe) is tiny_model.family
    assert family_for_pipeline_class("StableDiffusionPipeline") is tiny_model.family


def test_an_unsupported_pipeline_class_names_the_supported_ones():
    with pytest.raises(ValueError, match="'FluxPipeline'") as info:
        family_for_pipeline_class("FluxPipeline")
    supported = (
        "['StableDiffusion3Pipeline', 'StableDiffusionPipeline', 'StableDiffusionXLPipeline']"
    )
    assert supported in str(info.value)
