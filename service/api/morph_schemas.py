"""The request body of POST /morph (shared/morph.md); the planner is service/core/morph_plan.py."""

from typing import Annotated

from pydantic import Field

from latentmix.service.api.schemas import (
    MAX_SEED,
    GuidanceScale,
    LatentId,
    RequestBody,
    WebhookUrl,
)
from latentmix.service.core.contract import MAX_PROMPT_CHARS, MAX_STEPS
from latentmix.service.core.mix_methods import DEFAULT_METHOD, METHOD_ALIASES, MIX_METHODS
from latentmix.service.core.morph_plan import (
    ATTENTION_MODES,
    DEFAULT_ATTENTION_STEPS,
    DEFAULT_BETA,
    MAX_BETA_PARAMETER,
    PATHS,
    SPACINGS,
)

Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class MorphCreate(RequestBody):
    keyframes: list[LatentId] = Field(
        min_length=2,
        description="2 or more keyframe latent ids (ready or still being inverted), in order",
    )
    frames: int = Field(
        ge=2,
        description="total frames, keyframes included (at least one per keyframe); at most "
        "the server's max_morph_frames (GET /limits, LATENTMIX_MAX_MORPH_FRAMES)",
    )
    path: str = Field(
        default="chain",
        description="chain: keyframe 1 -> 2 -> ... -> K; loop: and back to keyframe 1",
        json_schema_extra={"enum": list(PATHS)},
    )
    spacing: str = Field(
        default="linear",
        description="coefficients within each segment: linear; beta (Beta(alpha, beta) "
        "inverse CDF, AID); perceptual (re-spaced to even consecutive distances: one extra "
        "generation pass)",
        json_schema_extra={"enum": list(SPACINGS)},
    )
    alpha: float = Field(
        default=DEFAULT_BETA[0], gt=0, le=MAX_BETA_PARAMETER, description="Beta spacing: alpha"
    )
    beta: float = Field(
        default=DEFAULT_BETA[1], gt=0, le=MAX_BETA_PARAMETER, description="Beta spacing: beta"
    )
    method: str = Field(
        default=DEFAULT_METHOD,
        description="latent mixing method (as POST /mix)",
        json_schema_extra={"enum": [*MIX_METHODS, *METHOD_ALIASES]},
    )
    attention: str = Field(
        default="none",
        description="AID attention interpolation: none, inner, outer, fused (N-way)",
        json_schema_extra={"enum": list(ATTENTION_MODES)},
    )
    attention_steps: float = Field(
        default=DEFAULT_ATTENTION_STEPS,
        ge=0.0,
        le=1.0,
        description="fraction of the steps (the first ones) that interpolate attention",
    )
    prompts: Prompt | list[Prompt] | None = Field(
        default=None,
        description="one prompt for all keyframes, or one per keyframe (their text embeddings "
        "are interpolated along the path); default: each keyframe's inversion prompt",
    )
    guide_prompt: Prompt | None = Field(
        default=None, description="PAID: replaces the interpolated text condition of inner frames"
    )
    guidance_scale: GuidanceScale = None
    steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="default: the keyframes' inversion steps"
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="recorded in each frame's provenance (the DDIM sampler draws no noise)",
    )
    webhook: WebhookUrl | None = None
