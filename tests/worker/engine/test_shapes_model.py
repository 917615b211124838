"""The shipped `shapes` model: it loads offline through `load_model` as a Stable Diffusion
pipeline with a DDIM sampler at 64 px, its weights are small float16 safetensors, and the
shapes classifier accepts most of its generations as the prompted shape and colour."""

import pytest
import torch

from latentmix.worker.engine.diffusion import generate
from latentmix.worker.engine.models import LoadedModel, ModelLoadError, load_model
from latentmix.worker.engine.shapes import evaluation, model, world
from latentmix.worker.engine.shapes.classifier import classify, judge, load_classifier

# Measured on the shipped weights (see docs/models.md, the `shapes` section); the bounds leave room
# for float differences across machines, not for a worse model.
CLASSIFIER_ACCURACY_BOUND = 0.97  # measured: 1.0 for each head on these 192 drawings
# The shipped model (UNet 6000 steps with offset noise, decoder fine-tuned): at 15 steps these
# 12 generations measured 12/12 right colours, shapes and both (chance 1/6 and 1/24); at 50
# steps over all 24 prompts, 97% colour, 95% shape, 94% both (docs/models.md). One miss allowed in
# colour, two in both.
FEW_STEPS_RIGHT_COLOUR_BOUND = 0.9
FEW_STEPS_RIGHT_SHAPE_AND_COLOUR_BOUND = 0.8


@pytest.fixture(scope="module")
def shapes_model() -> LoadedModel:
    return load_model("shapes", device="cpu", max_batch_size=32, vae_batch_size=32)


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(model.CLASSIFIER_FILE)


def test_shapes_loads_offline_as_a_stable_diffusion_pipeline_at_64px(shapes_model: LoadedModel):
    card = shapes_model.card
    assert card.family == "stable-diffusion" and card.model == "shapes"
    assert card.default_size == 64 and card.vae_scale_factor == 4 and card.latent_channels == 4
    assert card.scheduler == "DDIMScheduler" and card.prediction_type == "epsilon"
    assert shapes_model.pipe.scheduler.config.beta_schedule == "scaled_linear"
    latents = evaluation.noise(2, shapes_model, seed=0)
    assert latents.shape == (2, 4, 16, 16)
    images = generate(shapes_model, latents, "a red circle", steps=2, guidance_scale=7.5)
    assert [image.size for image in images] == [(64, 64), (64, 64)]


def test_missing_weights_are_a_load_error_that_says_how_to_train_them(monkeypatch, tmp_path):
    monkeypatch.setattr(model, "PIPELINE_DIR", tmp_path / "pipeline")
    with pytest.raises(ModelLoadError, match="train-shapes"):
        load_model("shapes", device="cpu")


def test_the_shipped_weights_are_float16_safetensors_under_25_mb():
    files = [p for p in model.WEIGHTS_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix not in (".json", ".txt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    from safetensors.torch import load_file

    unet = load_file(model.PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in unet.values()} == {torch.float16}


def test_the_classifier_knows_held_out_drawings(classifier):
    held_out = world.samples(range(192), seed=7)  # training used seed 0
    images = evaluation.to_tensor([evaluation.to_pil(s) for s in held_out])
    prediction = classify(classifier, images)
    for head in ("shape", "colour", "background"):
        truth = [getattr(s, head) for s in held_out]
        right = sum(p == t for p, t in zip(prediction.labels[head], truth, strict=True))
        assert right / len(held_out) >= CLASSIFIER_ACCURACY_BOUND, head


def test_the_classifier_accepts_most_generations_of_the_prompted_class(shapes_model, classifier):
    """A few prompts, few steps: most images are the prompted colour, and most the prompted
    shape and colour both (bounds measured: see FEW_STEPS_RIGHT_COLOUR_BOUND)."""
    pairs = [("circle", "red"), ("square", "blue"), ("triangle", "yellow"), ("star", "green")]
    score, images = evaluation.score_generation(
        shapes_model, classifier, pairs, per_prompt=3, steps=15, guidance_scale=7.5, seed=0
    )
    assert len(images) == 12
    assert score.rate("colour") >= FEW_STEPS_RIGHT_COLOUR_BOUND, score.prediction.labels
    assert score.rate("both") >= FEW_STEPS_RIGHT_SHAPE_AND_COLOUR_BOUND, score.prediction.labels


def test_the_card_carries_the_measured_augmentation_defaults_and_its_judge(shapes_model):
    augmentation = shapes_model.card.augmentation
    assert augmentation.prompt_template == "a {class}"
    assert (augmentation.inversion_guidance, augmentation.generation_guidance) == (1.0, 1.0)
    assert augmentation.mix_inversion == "ddim" and augmentation.judge == "shapes-classifier"
    assert len(augmentation.judge_labels) == len(world.SHAPES) * len(world.COLOUR_NAMES)


def test_the_judge_names_held_out_drawings_by_their_class_label(classifier):
    held_out = world.samples(range(48), seed=8)
    images = evaluation.to_tensor([evaluation.to_pil(s) for s in held_out])

    readings = judge(classifier, images)

    assert [label for label, _ in readings] == [f"{s.colour} {s.shape}" for s in held_out]
    assert all(0.5 < confidence <= 1.0 for _, confidence in readings)
    assert {label for label, _ in readings} <= set(model.SHAPES_AUGMENTATION.judge_labels)
