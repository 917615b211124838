"""Model families by the diffusers pipeline class they load; chosen when a model loads."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from latentmix.worker.engine.families.base import Conditioning, ModelFamily
from latentmix.worker.engine.families.stable_diffusion import StableDiffusion
from latentmix.worker.engine.families.stable_diffusion_3 import StableDiffusion3
from latentmix.worker.engine.families.stable_diffusion_xl import StableDiffusionXL

FAMILIES: tuple[ModelFamily, ...] = (StableDiffusion(),)
FAMILIES += (StableDiffusion3(),)
FAMILIES += (StableDiffusionXL(),)
FAMILY_BY_PIPELINE: dict[str, ModelFamily] = {
    pipeline_class: family for family in FAMILIES for pipeline_class in family.pipeline_classes
}


def family_for_pipeline_class(class_name: str) -> ModelFamily:
    """The family that loads `class_name` pipelines; ValueError naming the supported ones."""
    family = FAMILY_BY_PIPELINE.get(class_name)
    if family is None:
        raise ValueError(
            f"pipeline class {class_name!r} is not supported; supported pipeline classes are "
            f"{sorted(FAMILY_BY_PIPELINE)}"
        )
    return family


def family_of(pipe: Any) -> ModelFamily:
    return family_for_pipeline_class(type(pipe).__name__)


def family_for_source(source: str | Path) -> ModelFamily:
    """The family of a hub id or local diffusers directory, from its model_index.json."""
    from diffusers import DiffusionPipeline

    with warnings.catch_warnings():
        # diffusers still passes huggingface_hub's retired `local_dir_use_symlinks`.
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        config = DiffusionPipeline.load_config(source)
    return family_for_pipeline_class(config["_class_name"])


__all__ = [
    "FAMILIES",
    "Conditioning",
    "ModelFamily",
    "family_for_pipeline_class",
    "family_for_source",
    "family_of",
]
