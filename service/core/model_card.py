"""The model card: what a loaded model is and can do, one type for both processes.

The worker's engine builds it (each family describes its loaded pipeline; the engine adds
the inversion methods whose `Needs` the card meets), the worker publishes it in Redis
(`model_cards.py`), and the API validates requests against it and shows it at GET /models.
Methods and features match on the capabilities here, never on family names: a new family
that predicts noise gets every DDIM-type method, one that cannot interpolate attention says
so on its card.

Torch-free: the API imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from latentmix.service.core.augmentation_defaults import AugmentationDefaults

# diffusers' prediction types. A DDIM-type sampler steps with the noise estimate eps; a
# v-predicting denoiser's output converts to it (method.md section 1). A rectified-flow
# denoiser predicts the velocity v = n - x0 (inversion.md section 6).
EPSILON = "epsilon"
V_PREDICTION = "v_prediction"
FLOW_PREDICTION = "flow_prediction"
NOISE_PREDICTIONS = (EPSILON, V_PREDICTION)


class ModelCard(BaseModel):
    """A loaded model: its capabilities (what requests and methods are checked against)
    and how the worker runs it. Fields a newer worker adds are kept as they come."""

    model_config = ConfigDict(frozen=True, extra="allow")

    # --- capabilities ---
    model: str = Field(description="the model as requests name it: hub id, path or built-in")
    family: str
    latent_channels: int
    vae_scale_factor: int = Field(description="pixels per latent cell along each side")
    default_size: int = Field(description="image side in pixels the model was trained at")
    default_guidance: float
    prediction_type: str = Field(description="epsilon, v_prediction or flow_prediction")
    inversion_methods: tuple[str, ...] = Field(
        description="the inversion methods that work with the model; the first is its default"
    )
    # Pixels an image side must be a multiple of: the latent cell, times the transformer's
    # patch size where the denoiser cuts the latent into patches (SD 3: 16). None on cards of
    # workers from before it was published: the latent cell.
    size_multiple: int | None = None
    # Whether worker/engine/attention/ can interpolate the denoiser's attention (AID): it
    # knows the attention layers of a Stable Diffusion 1.x/2.x UNet. False on older cards.
    attention_interpolation: bool = False
    # Whether the text conditioning has a pooled embedding beside the token sequence (SDXL,
    # SD 3): a method that replaces the unconditional sequence alone (null-text) cannot run.
    pooled_text_embedding: bool = False
    # What mixing needs to stay on-class on this model (prompt template, guidance for each
    # pass, inversion method, judge); None on cards of older workers.
    augmentation: AugmentationDefaults | None = None
    # --- how the worker runs it ---
    scheduler: str
    attention: str = Field(description="the attention processor's class")
    device: str
    dtype: str
    max_batch_size: int
    vae_batch_size: int
    inversion_batch_size: int
    compiled: bool
    t5: bool | None = Field(
        default=None, description="T5 text encoder loaded; None: the family has none"
    )

    @property
    def pixel_multiple(self) -> int:
        return self.size_multiple or self.vae_scale_factor

    def check_attention_interpolation(self) -> None:
        """ValueError naming the model unless it can interpolate attention (AID)."""
        if not self.attention_interpolation:
            raise ValueError(
                f"model {self.model!r} (family {self.family!r}) cannot interpolate attention "
                "(attention_interpolation false on its card); use attention 'none'"
            )


@dataclass(frozen=True)
class Needs:
    """What an inversion method needs of a model, checked against its card."""

    prediction_types: tuple[str, ...]
    single_text_embedding: bool = False  # no pooled embedding beside the sequence

    def met_by(self, card: ModelCard) -> bool:
        return card.prediction_type in self.prediction_types and not (
            self.single_text_embedding and card.pooled_text_embedding
        )

    def __str__(self) -> str:
        pooled = " without a pooled text embedding" if self.single_text_embedding else ""
        return f"models predicting {' or '.join(self.prediction_types)}{pooled}"


# Every DDIM-type method: the denoiser's output as eps through `ModelFamily.to_noise`.
PREDICTS_NOISE = Needs(NOISE_PREDICTIONS)
PREDICTS_FLOW = Needs((FLOW_PREDICTION,))
