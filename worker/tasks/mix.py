"""The mix job: input latents x weight rows -> mixed latents and their images."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from rq.job import Job

from latentmix.service.core.contract import (
    DEFAULT_STEPS,
    MixRequest,
    MixResult,
    plan_mix,
    shared_value,
)
from latentmix.service.core.diagnostics import InputStatistics, Thresholds, diagnose
from latentmix.service.core.latents import LatentRecord
from latentmix.worker.batching import generate_rows
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion import default_inversion, get_inversion
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.morph import Keyframes, frame_conditioning, render_frames
from latentmix.worker.engine.results import Inverted
from latentmix.worker.engine.state_mixing import mix_states
from latentmix.worker.runtime import WorkerContext, context
from latentmix.worker.tasks.reporting import (
    BatchPublisher,
    batch_progress,
    progress_reporter,
    task,
)
from latentmix.worker.tasks.streaming import (
    ImageStream,
    check_one_shape,
    ready_record,
    rows_to_render,
    store_mixed_latent,
)


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A mix request queued by release 0.1 (weights, no ids) as today's MixRequest: its
    prompt and steps default from the inputs' records, as 0.1's worker did."""
    if "rows" in raw:
        return raw
    ctx = context()
    producers = raw.get("producers") or {}
    records = [ready_record(ctx, i, producers.get(i)) for i in raw["latents"]]
    prompt = raw.get("prompt")
    steps = raw.get("steps") or shared_value(r.settings.get("steps") for r in records)
    return plan_mix(
        latents=raw["latents"],
        rows=raw["weights"],
        method=raw["method"],
        prompt=prompt if prompt is not None else (shared_value(r.prompt for r in records) or ""),
        steps=steps or DEFAULT_STEPS,
        guidance_scale=raw["guidance_scale"],
        seed=raw.get("seed"),
        producers=producers,
    ).model_dump()


@task(MixRequest, upgrade=_upgrade)
def mix_latents(ctx: WorkerContext, job: Job, request: MixRequest) -> MixResult:
    """Mix input latents with each weight row, publish the mixes, generate their images.

    Images are generated batch by batch; each finished batch is uploaded while the next one
    computes, then appended to the job's partial result, so clients can download while the
    job runs. A mix rendered before (same latent, prompt and settings) is not rendered
    again: it is appended at once."""
    records = [ready_record(ctx, i, request.producers.get(i)) for i in request.latents]
    check_one_shape(records)
    inputs = np.stack(ctx.storage.in_parallel(lambda r: ctx.catalog.load(r.id), records))
    stack = torch.from_numpy(inputs)
    mixed = mix(stack, request.weights, request.method)
    mixed_state = _mixed_state(ctx, request, records, mixed)
    diagnostics = diagnose(
        InputStatistics.of(inputs), request.weights, request.method, Thresholds.of(ctx.settings)
    )
    images = [request.image(index, diagnostics[index]) for index in range(len(request.rows))]
    stream = ImageStream(ctx, job, images)
    rendered = stream.store_latents(
        lambda index: store_mixed_latent(
            ctx, mixed_state.rows(index, index + 1), images[index], request.inversion
        )
    )
    progress = progress_reporter(ctx.redis, job)
    with BatchPublisher(ctx.publishing) as publisher:
        batches = rows_to_render(
            rendered,
            ctx.model.max_batch_size,
            on_rendered=lambda rows: publisher.submit(functools.partial(stream.list, rows)),
        )
        generated = 0
        for rows, planned in batches:
            pictures = _render(
                ctx, request, stack, mixed_state, rows, batch_progress(progress, generated, planned)
            )
            publisher.submit(functools.partial(stream.publish, rows, pictures))
            generated += 1
        if generated:  # fewer batches than planned when the last rows were rendered before
            progress(generated * request.steps, generated * request.steps)
    return MixResult(
        latents=[image.latent for image in images],
        images=images,
        method=request.method,
        prompt=request.prompt,
        seed=request.seed,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
    )


def _render(ctx: WorkerContext, request: MixRequest, stack, state: Inverted, rows, progress):
    """The images of `rows`, with the sampler of the inputs' inversion method; with
    attention interpolation (plain latents only: the API refuses it for other methods),
    each row's attention mixes the inputs' (their own generation with their prompt) by
    its weights."""
    mixed = state.latent
    prompts = request.prompts or [request.prompt] * len(request.latents)
    if request.attention == "none":
        # One prompt stays a string: jobs batched together then encode their prompts at once.
        text = (
            request.prompt if request.prompt is not None else _row_text(ctx, request, prompts, rows)
        )
        return generate_rows(  # with other jobs' rows, when batched (worker/batching.py)
            ctx.model,
            _select(state, rows) if request.inversion else mixed[rows],
            text,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            progress=progress,
        )
    inputs = Keyframes(
        latents=stack,
        prompts=prompts,
        keys=[(latent, prompt) for latent, prompt in zip(request.latents, prompts, strict=True)],
    )
    return render_frames(
        ctx.model,
        mixed[rows],
        _row_text(ctx, request, prompts, rows),
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        attention=request.attention,
        row_weights=[request.rows[i].weights if request.interpolates(i) else None for i in rows],
        keyframes=inputs,
        attention_steps=request.attention_steps,
        cache=ctx.attention_cache,
        progress=progress,
    )


def _row_text(
    ctx: WorkerContext, request: MixRequest, prompts: list[str], rows: list[int]
) -> Conditioning:
    """Each row's text condition: the mix's prompt, or, without one, the inputs' `prompts`
    embedded and mixed with the row's weights (what morph frames between prompts get)."""
    return frame_conditioning(
        ctx.model,
        prompts,
        [request.prompt] * len(rows),
        [request.rows[i].weights for i in rows],
    )


def _mixed_state(
    ctx: WorkerContext, request: MixRequest, records: list[LatentRecord], mixed: torch.Tensor
) -> Inverted:
    """The mixed latents with the inputs' auxiliary state mixed by the same weights
    (engine/state_mixing.py), to be sampled with the inputs' method and settings. Plain
    latents (the default method, no options) have no state."""
    if request.inversion is None:
        return Inverted(latent=mixed, method=default_inversion(ctx.model.card).name)
    method = get_inversion(request.inversion, ctx.model.card)
    states = ctx.storage.in_parallel(lambda r: ctx.catalog.load_aux(r.id), records)
    tensors = [{name: torch.from_numpy(v) for name, v in state.items()} for state in states]
    aux = mix_states(tensors, request.weights, request.method, method.latent_state)
    return Inverted(
        latent=mixed, aux=aux, method=method.name, settings=dict(request.inversion_settings)
    )


def _select(state: Inverted, rows: list[int]) -> Inverted:
    return Inverted(
        latent=state.latent[rows],
        aux={name: value[rows] for name, value in state.aux.items()},
        method=state.method,
        settings=state.settings,
    )
