"""Where the shipped `shapes` weights live: a diffusers StableDiffusionPipeline folder and the
classifier's safetensors, inside the package (`weights/`, shipped as package data)."""

from __future__ import annotations

from pathlib import Path

SHAPES_MODEL_NAME = "shapes"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_FILE = WEIGHTS_DIR / "classifier.safetensors"
NATIVE_SIZE = 64  # pixels


def shapes_pipeline_dir() -> Path:
    """The shipped pipeline folder; FileNotFoundError names the missing file."""
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shapes model's weights are missing ({PIPELINE_DIR / 'model_index.json'}); "
            "train them with scripts/train-shapes"
        )
    return PIPELINE_DIR
