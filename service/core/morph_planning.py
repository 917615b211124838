"""A morph job planned from what a client asked: the keyframes resolved, the plan checked
(frames, path, spacing, attention, the mixing method's weights), the `MorphRequest` built.
Raises the domain errors of `errors.py`; the route only parses, calls, enqueues and
answers.
"""

from __future__ import annotations

from typing import Protocol

from redis import Redis

from latentmix.service.core.config import Settings
from latentmix.service.core.contract import DEFAULT_STEPS, MorphRequest, shared_value
from latentmix.service.core.errors import Invalid, invalid_on_value_error
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.mix_inputs import resolve_inputs
from latentmix.service.core.mix_methods import canonical_method, check_weights
from latentmix.service.core.mix_planning import PlannedJob, waits_for
from latentmix.service.core.model_cards import check_attention, guidance_for, model_card
from latentmix.service.core.morph_plan import check_morph


class MorphAsk(Protocol):
    """What POST /morph asks (service/api/morph_schemas.py `MorphCreate`)."""

    keyframes: list[str]
    frames: int
    path: str
    spacing: str
    alpha: float
    beta: float
    method: str
    attention: str
    attention_steps: float
    prompts: str | list[str] | None
    guide_prompt: str | None
    guidance_scale: float | None
    steps: int | None
    seed: int | None


def plan_morph_job(
    ask: MorphAsk, settings: Settings, redis: Redis, catalog: LatentCatalog
) -> PlannedJob:
    """The morph job `ask` describes; the keyframes are resolved first (one that does not
    exist says more than a plan that does not fit them)."""
    if len(ask.keyframes) > settings.max_morph_frames:
        raise Invalid(
            f"{len(ask.keyframes)} keyframes in one morph; frames (keyframes included) are "
            f"limited to {settings.max_morph_frames} (LATENTMIX_MAX_MORPH_FRAMES)"
        )
    inputs = resolve_inputs(catalog, redis, ask.keyframes)
    model = inputs.model or settings.model
    with invalid_on_value_error():
        _check_plan(ask, settings.max_morph_frames)
        method = canonical_method(ask.method)
        check_attention(redis, model, ask.attention)
    morph = MorphRequest(
        keyframes=ask.keyframes,
        prompts=_prompts(ask.prompts, inputs.prompts),
        guide_prompt=ask.guide_prompt,
        frames=ask.frames,
        path=ask.path,
        spacing=ask.spacing,
        alpha=ask.alpha,
        beta=ask.beta,
        method=method,
        attention=ask.attention,
        attention_steps=ask.attention_steps,
        steps=ask.steps or shared_value(inputs.steps) or DEFAULT_STEPS,
        guidance_scale=guidance_for(ask.guidance_scale, model_card(redis, model), "generation"),
        seed=ask.seed,
        producers=inputs.producers,
    )
    weights = [morph.frame(planned).provenance.weights for planned in morph.plan()]
    with invalid_on_value_error():
        check_weights(weights, len(ask.keyframes), method)
    return PlannedJob(model, morph, waits_for(inputs))


def _check_plan(ask: MorphAsk, max_frames: int) -> None:
    check_morph(
        len(ask.keyframes),
        ask.frames,
        path=ask.path,
        spacing=ask.spacing,
        alpha=ask.alpha,
        beta=ask.beta,
        attention=ask.attention,
        attention_steps=ask.attention_steps,
        max_frames=max_frames,
    )


def _prompts(asked: str | list[str] | None, inverted: list[str | None]) -> list[str]:
    """One prompt per keyframe: as asked, or each keyframe's inversion prompt."""
    if isinstance(asked, str):
        return [asked] * len(inverted)
    if asked is None:
        return [prompt or "" for prompt in inverted]
    if len(asked) != len(inverted):
        raise Invalid(f"{len(asked)} prompts for {len(inverted)} keyframes; give one per keyframe")
    return asked
