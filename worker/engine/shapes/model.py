"""Where the shipped `shapes` weights live: a diffusers StableDiffusionPipeline folder and the
classifier's safetensors, inside the package (`weights/`, shipped as package data)."""

from __future__ import annotations

from pathlib import Path

from latentmix.service.core.augmentation_defaults import AugmentationDefaults
from latentmix.worker.engine.shapes import world

SHAPES_MODEL_NAME = "shapes"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_FILE = WEIGHTS_DIR / "classifier.safetensors"
NATIVE_SIZE = 64  # pixels
JUDGE = "shapes-classifier"
# Measured (docs/augmentation.md): the model was trained on "a {colour} {shape}" captions, and
# its DDIM inversion round trips at 41 dB with guidance 1 against 17.5 dB at 7.5; mixes of
# 2-4 drawings generated at guidance 1 from latents inverted at 1 were read as their class
# 16 of 16 times for a 120- and a 4-drawing class, against 10 and 7 of 16 at 7.5 / 7.5.
SHAPES_AUGMENTATION = AugmentationDefaults(
    prompt_template="a {class}",
    inversion_guidance=1.0,
    generation_guidance=1.0,
    mix_inversion="ddim",
    judge=JUDGE,
    judge_labels=tuple(f"{c} {s}" for s in world.SHAPES for c in world.COLOUR_NAMES),
)


def shapes_pipeline_dir() -> Path:
    """The shipped pipeline folder; FileNotFoundError names the missing file."""
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shapes model's weights are missing ({PIPELINE_DIR / 'model_index.json'}); "
            "train them with scripts/train-shapes"
        )
    return PIPELINE_DIR
