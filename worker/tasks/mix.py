"""The mix job: input latents x weight rows -> mixed latents and their images."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import (
    DEFAULT_STEPS,
    MixImage,
    MixRequest,
    MixResult,
    MorphFrame,
    plan_mix,
    shared_value,
)
from latentmix.service.core.diagnostics import InputStatistics, Thresholds, diagnose
from latentmix.service.core.images import encode_png
from latentmix.service.core.inversion_mixing import origin_of_record, shared_origin
from latentmix.service.core.jobs import append_partial_result, fetch_job, view_job
from latentmix.service.core.latents import LatentRecord, image_key
from latentmix.service.core.storage import STORAGE_IO, in_parallel
from latentmix.worker.batching import generate_rows
from latentmix.worker.engine.attention.keyframes import worker_cache
from latentmix.worker.engine.diffusion import encode_prompts
from latentmix.worker.engine.inversion import default_inversion, get_inversion
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.morph import Keyframes, render_frames
from latentmix.worker.engine.results import Inverted
from latentmix.worker.engine.state_mixing import mix_states
from latentmix.worker.runtime import WorkerContext, context
from latentmix.worker.tasks.reporting import (
    BatchPublisher,
    batch_progress,
    progress_reporter,
    task,
)


class LatentUnavailable(RuntimeError):
    """An input latent of a mix is missing (its inversion failed or was canceled)."""


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A mix request queued by release 0.1 (weights, no ids) as today's MixRequest: its
    prompt and steps default from the inputs' records, as 0.1's worker did."""
    if "rows" in raw:
        return raw
    ctx = context()
    producers = raw.get("producers") or {}
    records = [_ready_record(ctx, i, producers.get(i)) for i in raw["latents"]]
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
    records = [_ready_record(ctx, i, request.producers.get(i)) for i in request.latents]
    _check_compatible(records, ctx.settings.model)
    inputs = np.stack(in_parallel(lambda r: ctx.catalog.load(r.id), records))
    stack = torch.from_numpy(inputs)
    mixed = mix(stack, request.weights, request.method)
    mixed_state = _mixed_state(ctx, request, records, mixed)
    diagnostics = diagnose(
        InputStatistics.of(inputs), request.weights, request.method, Thresholds.of(ctx.settings)
    )
    images = [request.image(index, diagnostics[index]) for index in range(len(request.rows))]
    stream = ImageStream(ctx, job, images)
    rendered = stream.store_latents(
        lambda index: _publish_mix(
            ctx, mixed_state.rows(index, index + 1), images[index], request.inversion
        )
    )
    progress = progress_reporter(ctx.redis, job)
    with BatchPublisher() as publisher:
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
    each row's attention mixes the inputs' (their own generation with the mix's prompt) by
    its weights."""
    mixed = state.latent
    if request.attention == "none":
        return generate_rows(  # with other jobs' rows, when batched (worker/batching.py)
            ctx.model,
            _select(state, rows) if request.inversion else mixed[rows],
            request.prompt,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            progress=progress,
        )
    inputs = Keyframes(
        latents=stack,
        prompts=[request.prompt] * len(request.latents),
        keys=[(latent, request.prompt) for latent in request.latents],
    )
    return render_frames(
        ctx.model,
        mixed[rows],
        encode_prompts(ctx.model, [request.prompt] * len(rows)),
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        attention=request.attention,
        row_weights=[request.rows[i].weights if request.interpolates(i) else None for i in rows],
        keyframes=inputs,
        attention_steps=request.attention_steps,
        cache=worker_cache(ctx.settings.worker_attention_cache_mb),
        progress=progress,
    )


def rows_to_render(
    rendered: list[Future | None], size: int, on_rendered: Callable[[list[int]], None]
) -> Iterator[tuple[list[int], int]]:
    """Batches of the rows whose image is not stored yet, each as soon as its rows are
    known, with the number of batches planned so far (rows not yet known count as to be
    rendered). The rows whose image is stored go to `on_rendered`, together, before the
    next batch. Rows without a future (copies of an earlier row) are skipped."""
    batch: list[int] = []
    stored: list[int] = []
    yielded = 0
    unknown = sum(future is not None for future in rendered)
    for index, future in enumerate(rendered):
        if future is None:
            continue
        (stored if future.result() else batch).append(index)
        unknown -= 1
        if stored and (len(batch) == size or not unknown):
            on_rendered(stored)
            stored = []
        if len(batch) == size or (batch and not unknown):
            yield batch, yielded + 1 + math.ceil(unknown / size)
            yielded += 1
            batch = []


def _mixed_state(
    ctx: WorkerContext, request: MixRequest, records: list[LatentRecord], mixed: torch.Tensor
) -> Inverted:
    """The mixed latents with the inputs' auxiliary state mixed by the same weights
    (engine/state_mixing.py), to be sampled with the inputs' method and settings. Plain
    latents (the default method, no options) have no state."""
    _check_inversions(records, request, ctx.model)
    if request.inversion is None:
        return Inverted(latent=mixed, method=default_inversion(ctx.model.card).name)
    method = get_inversion(request.inversion, ctx.model.card)
    states = in_parallel(lambda r: ctx.catalog.load_aux(r.id), records)
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


class ImageStream:
    """A job's images (mix images or morph frames) streamed as they finish: each batch's PNGs
    uploaded, then the batch appended to the job's partial result, which clients poll.

    Rows with the same image id (identical weight rows: the same picture) are rendered once:
    `copies` maps each later one to the first, and is listed together with it."""

    def __init__(self, ctx: WorkerContext, job: Job, images: Sequence[MixImage | MorphFrame]):
        self.ctx, self.job, self.images = ctx, job, images
        self.copies: dict[int, int] = {}  # row -> the earlier row with the same image
        first: dict[str, int] = {}
        for index, image in enumerate(images):
            original = first.setdefault(image.id, index)
            if original != index:
                self.copies[index] = original

    def store_latents(self, publish: Callable[[int], bool]) -> list[Future | None]:
        """`publish(row)` (store the row's mixed latent; whether its image is stored) for each
        row but the copies, on the storage threads: the latents are stored while the first
        batches generate. A copy's entry is None (`rows_to_render` skips it)."""
        return [
            None if row in self.copies else STORAGE_IO.submit(publish, row)
            for row in range(len(self.images))
        ]

    def list(self, rows: list[int]) -> None:
        listed = set(rows)
        rows = rows + [copy for copy, row in self.copies.items() if row in listed]
        finished = [self.images[i].model_dump(mode="json") for i in rows]
        append_partial_result(self.ctx.redis, self.job.id, finished, self.ctx.settings)

    def publish(self, rows: list[int], pictures: list[Image.Image]) -> None:
        def upload(index: int, picture: Image.Image) -> None:
            key = image_key(self.images[index].id)
            self.ctx.storage.put(key, encode_png(picture), "image/png")

        in_parallel(upload, rows, pictures)
        self.list(rows)


def _publish_mix(
    ctx: WorkerContext, state: Inverted, image: MixImage, inversion: str | None
) -> bool:
    """Store one mixed latent (with its mixed state and the inversion method its inputs
    came from, None for plain latents) as a latent in its own right; return whether its
    image is stored already. Images are stored only after their latent: a new latent has
    none."""
    latent = state.latent[0].numpy()
    aux = {name: value[0].numpy() for name, value in state.aux.items()}
    record = LatentRecord.describe(
        image.latent,
        latent,
        model=ctx.settings.model,
        source="mix",
        parents=image.provenance.inputs,
        weights=image.provenance.weights,
        method=image.provenance.method,
        prompt=image.provenance.prompt,
        inversion=inversion,
        settings=dict(state.settings),
        aux={name: list(value.shape) for name, value in aux.items()},
        aux_bytes=sum(value.nbytes for value in aux.values()),
    )
    if ctx.catalog.publish(record, latent, aux):
        return False
    return ctx.storage.exists(image_key(image.id))


def _ready_record(ctx: WorkerContext, latent_id: str, producer_id: str | None) -> LatentRecord:
    """The input's record, or an error that says why it is missing."""
    record = ctx.catalog.record(latent_id)
    if record is not None:
        return record
    reason = "it is not stored"
    if producer_id and (producer := fetch_job(ctx.redis, producer_id)) is not None:
        view = view_job(ctx.redis, producer)
        reason = f"its {view.type} job {producer_id} ended {view.status}: {view.error}"
    raise LatentUnavailable(f"latent {latent_id} is not available: {reason}")


def _check_inversions(records: list[LatentRecord], request: MixRequest, model) -> None:
    """The inputs share the inversion origin the API planned the mix for."""
    default = default_inversion(model.card).name
    origins = {r.id: origin_of_record(r.inversion, r.settings, default) for r in records}
    origin = shared_origin(origins)
    planned = request.inversion or default
    if origin.method != planned:
        raise ValueError(
            f"the mix was planned for {planned} latents; its inputs are {origin.method}"
        )


def _check_compatible(records: list[LatentRecord], model: str) -> None:
    shapes = {tuple(r.shape) for r in records}
    if len(shapes) > 1:
        raise ValueError(f"latents have different shapes: {sorted(shapes)}")
    foreign = [r.id for r in records if r.model != model]
    if foreign:
        raise ValueError(f"latents {foreign} belong to another model than {model}")
