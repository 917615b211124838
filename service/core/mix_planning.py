"""A mix job planned from what a client asked: the inputs resolved, every check the API
makes before queueing (limits, weights, inversion origins, attention), the `MixRequest`
built. Raises the domain errors of `errors.py`; the route only parses, calls, enqueues and
answers. The worker's task trusts the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from redis import Redis

from latentmix.service.core.config import Settings
from latentmix.service.core.contract import (
    DEFAULT_STEPS,
    Contract,
    MixRequest,
    plan_mix,
    shared_value,
)
from latentmix.service.core.diagnostics import (
    InputStatistics,
    MixDiagnostics,
    Thresholds,
    diagnose,
)
from latentmix.service.core.errors import Invalid, NotReady, invalid_on_value_error
from latentmix.service.core.inversion_mixing import check_generation_steps
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.mix_inputs import (
    Inputs,
    default_method,
    inversion_origin,
    resolve_inputs,
)
from latentmix.service.core.mix_methods import canonical_method, check_weights
from latentmix.service.core.model_cards import check_attention, guidance_for, model_card
from latentmix.service.core.weight_sampling import sample_weights

WeightRows = list[list[float]]


class SampleAsk(Protocol):
    """Seeded weight rows, as POST /mix's `sample` asks for them."""

    count: int
    scheme: str
    seed: int
    alpha: float
    k: int | None


class MixAsk(Protocol):
    """What POST /mix asks (service/api/schemas.py `MixCreate`)."""

    latents: list[str]
    weights: list[float] | list[list[float]] | None
    sample: SampleAsk | None
    method: str
    prompt: str | None
    steps: int | None
    guidance_scale: float | None
    attention: str
    attention_steps: float


@dataclass(frozen=True)
class PlannedJob:
    """A job ready to queue: its model's queue, its request, the jobs it waits for."""

    model: str
    request: Contract
    depends_on: list[str] | None


def plan_mix_job(
    ask: MixAsk, settings: Settings, redis: Redis, catalog: LatentCatalog
) -> PlannedJob:
    """The mix job `ask` describes. The inputs' number is bounded first, then the inputs are
    resolved (a latent that does not exist says more than weights that do not fit it), then
    the rows are bounded before any is drawn."""
    _check_limit(
        len(ask.latents),
        settings.max_latents_per_mix,
        "latents in one mix",
        "LATENTMIX_MAX_LATENTS_PER_MIX",
    )
    inputs = resolve_inputs(catalog, redis, ask.latents)
    model = inputs.model or settings.model
    origin = inversion_origin(inputs, model, redis)
    mixes = ask.sample.count if ask.sample else len(weight_rows(ask.weights, 1))
    _check_limit(
        mixes,
        settings.max_mixes_per_request,
        "mixes in one request",
        "LATENTMIX_MAX_MIXES_PER_REQUEST",
    )
    steps = ask.steps or shared_value(inputs.steps) or DEFAULT_STEPS
    with invalid_on_value_error():
        method = canonical_method(ask.method)
        rows = weight_rows(ask.weights, len(ask.latents), ask.sample)
        check_weights(rows, len(ask.latents), method)
        check_generation_steps(origin, steps)
        check_attention(redis, model, ask.attention)
    # plain latents (the default method, no options: uploads, DDIM) are sampled as always
    plain = origin.method == default_method(model, redis) and not origin.options
    if ask.attention != "none" and not plain:
        raise Invalid(
            f"attention interpolation mixes plain latents only; these are {origin.describe()} "
            "latents: send attention 'none'"
        )
    mix = plan_mix(
        latents=ask.latents,
        rows=rows,
        method=method,
        **text_condition(ask.prompt, inputs.prompts),
        steps=steps,
        guidance_scale=guidance_for(ask.guidance_scale, model_card(redis, model), "generation"),
        seed=ask.sample.seed if ask.sample else None,
        producers=inputs.producers,
        attention=ask.attention,
        attention_steps=ask.attention_steps,
        inversion=None if plain else origin.method,
        inversion_settings=None if plain else origin.record_settings(),
    )
    return PlannedJob(model, mix, waits_for(inputs))


def text_condition(asked: str | None, input_prompts: list[str | None]) -> dict[str, Any]:
    """The mix's prompt: the one asked for; else the one its inputs were inverted with;
    else, where they differ, none: each row mixes the inputs' prompts with its weights
    (method.md section 3, as morph frames do; on `shapes` the empty prompt kept the class
    of 3 rows in 16, the mixed prompts of all 16: docs/methods/mixing.md). An input without
    a prompt counts as the empty prompt."""
    if asked is not None:
        return {"prompt": asked}
    prompts = [prompt or "" for prompt in input_prompts]
    if len(set(prompts)) == 1:
        return {"prompt": prompts[0]}
    return {"prompt": None, "prompts": prompts}


def waits_for(inputs: Inputs) -> list[str] | None:
    """The jobs still producing some of the inputs (RQ's depends_on), None if none."""
    return sorted(set(inputs.producers.values())) or None


def _check_limit(count: int, limit: int, what: str, variable: str) -> None:
    if count > limit:
        raise Invalid(f"{count} {what}; the limit is {limit} ({variable})")


def weight_rows(weights, count: int, sample: SampleAsk | None = None) -> WeightRows:
    """Flat list: one mix; list of lists: one mix per row; a sample spec: seeded rows;
    None: the uniform centroid."""
    if sample is not None:
        return sample_weights(
            count,
            sample.count,
            sample.scheme,
            sample.seed,
            alpha=sample.alpha,
            subset_size=sample.k,
        )
    if weights is None:
        return [[1.0 / count] * count]
    if weights and isinstance(weights[0], list):
        return weights
    return [weights]


def dry_run(catalog: LatentCatalog, mix: MixRequest, settings: Settings) -> list[MixDiagnostics]:
    """The diagnostics of every row, from the stored inputs: no job, no UNet, no mix."""
    if mix.producers:
        pending = sorted(mix.producers)[0]
        raise NotReady(
            f"latent {pending} is still being computed (job {mix.producers[pending]}); "
            "dry_run needs every input ready"
        )
    # Only the inputs some row uses are read (a subset sample uses few of a large pool).
    weights = np.asarray(mix.weights)
    used = np.arange(len(mix.latents))
    if mix.method != "slerp":  # slerp's angle needs both inputs whatever the weights
        used = np.flatnonzero(weights.any(axis=0))
    latents = np.stack(catalog.storage.in_parallel(catalog.load, [mix.latents[i] for i in used]))
    return diagnose(
        InputStatistics.of(latents), weights[:, used], mix.method, Thresholds.of(settings)
    )
