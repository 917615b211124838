"""What mixing and augmentation need to work on a model, carried on its card (`augmentation`).

The worker fills it in: each family its paper defaults, a model trained here its measured
ones (`shapes`: worker/engine/shapes/model.py). `POST /latents` and `POST /mix` use its
guidance scales when a request names none, and `latentmix augment` its prompt template and
inversion method, and prints what it took from here. Torch-free: the API imports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Stable Diffusion's (method.md section 1: "a photo of a {class name}", guidance 7.5).
PHOTO_PROMPT_TEMPLATE = "a photo of a {class}"


class AugmentationDefaults(BaseModel):
    """The settings under which a model's mixes stay on their class."""

    model_config = ConfigDict(frozen=True)

    prompt_template: str = Field(
        description="the prompt of a class: {class} is its name (underscores as spaces)"
    )
    inversion_guidance: float = Field(description="the guidance scale to invert images with")
    generation_guidance: float = Field(description="the guidance scale to generate mixes with")
    mix_inversion: str | None = Field(
        default=None,
        description="the inversion method whose mixes stay on-class; null: the model's default",
    )
    judge: str | None = Field(
        default=None,
        description="a classifier of the model's classes the worker runs for POST "
        "/evaluations with judge (e.g. 'shapes-classifier'); null: none",
    )
    judge_labels: tuple[str, ...] = Field(
        default=(), description="the classes the judge tells apart (a class name matches one)"
    )

    @classmethod
    def paper(cls, guidance: float) -> AugmentationDefaults:
        """A Stable Diffusion model's: the paper's prompt and its guidance for both passes."""
        return cls(
            prompt_template=PHOTO_PROMPT_TEMPLATE,
            inversion_guidance=guidance,
            generation_guidance=guidance,
        )
