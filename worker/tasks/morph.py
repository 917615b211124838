"""The morph job: keyframe latents -> frames along the path, each a mix of its two
keyframes, rendered and streamed like a mix's images (shared/morph.md)."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import torch
from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import MorphFrame, MorphMetrics, MorphRequest, MorphResult
from latentmix.service.core.latents import image_key
from latentmix.service.core.morph_plan import PlannedFrame, respace_by_distance
from latentmix.worker.engine.attention.keyframes import select_rows
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.frame_distance import RGB_RMSE, FrameDistance
from latentmix.worker.engine.inversion import default_inversion
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.morph import Keyframes, frame_conditioning, render_frames
from latentmix.worker.engine.morph_metrics import consistency, smoothness
from latentmix.worker.engine.results import Inverted
from latentmix.worker.runtime import WorkerContext
from latentmix.worker.tasks.reporting import (
    BatchPublisher,
    batch_progress,
    in_batches,
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


@task(MorphRequest)
def morph_keyframes(ctx: WorkerContext, job: Job, request: MorphRequest) -> MorphResult:
    """Plan the frames, mix their latents, render them batch by batch, publishing each batch
    as it finishes. Perceptual spacing first renders the uniform frames (not published),
    re-spaces each segment by their consecutive distances, then renders the frames kept."""
    records = [ready_record(ctx, i, request.producers.get(i)) for i in request.keyframes]
    check_one_shape(records)
    stack = torch.stack(
        ctx.storage.in_parallel(lambda r: torch.from_numpy(ctx.catalog.load(r.id)), records)
    )
    renderer = _Renderer(ctx, request, stack)
    distance = ctx.frame_distance()
    planned = request.plan()
    passes = 1
    if request.spacing == "perceptual":  # the uniform pass: progress shown, a cancel heard
        uniform = renderer.render(planned, progress_reporter(ctx.redis, job))
        planned = request.plan(_respaced(request, planned, uniform, distance))
        passes = 2
    frames = [request.frame(p) for p in planned]
    images = renderer.render_and_publish(job, planned, frames)
    distances = distance.consecutive(images)
    return MorphResult(
        latents=[frame.latent for frame in frames],
        images=frames,
        keyframes=request.keyframes,
        path=request.path,
        spacing=request.spacing,
        coefficients=_per_segment(planned, request.path),
        passes=passes,
        method=request.method,
        attention=request.attention,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        attention_mb_per_keyframe=(
            max(renderer.reference_bytes) / 2**20 if renderer.reference_bytes else None
        ),
        metrics=MorphMetrics(
            distance=distance.name,
            distances=distances,
            smoothness=smoothness(distances),
            consistency=consistency(distances),
        ),
    )


class _Renderer:
    """Renders planned frames of one morph on the worker's model."""

    def __init__(self, ctx: WorkerContext, request: MorphRequest, stack: torch.Tensor) -> None:
        self.ctx, self.request, self.stack = ctx, request, stack
        self.keyframes = Keyframes(
            latents=stack,
            prompts=request.prompts,
            keys=list(zip(request.keyframes, request.prompts, strict=True)),
        )
        self.reference_bytes: list[int] = []  # each keyframe's cached attention, once known

    def prepare(self, planned: Sequence[PlannedFrame]) -> tuple[torch.Tensor, Conditioning]:
        """The frames' mixed latents (the /mix code path) and their text conditions."""
        request, k = self.request, len(self.request.keyframes)
        weights = [p.weights(k) for p in planned]
        prompts = [request.frame_prompt(p) for p in planned]
        return (
            mix(self.stack, weights, request.method),
            frame_conditioning(self.ctx.model, request.prompts, prompts, weights),
        )

    def render(self, planned: Sequence[PlannedFrame], progress) -> list[Image.Image]:
        """Images of `planned` frames, in batches of the model's batch size."""
        mixed, conditioning = self.prepare(planned)
        images: list[Image.Image] = []
        batches = in_batches(len(planned), self.ctx.model.max_batch_size)
        for number, rows in enumerate(batches):
            images += self._render_rows(
                mixed[rows],
                select_rows(conditioning, rows),
                [planned[i] for i in rows],
                batch_progress(progress, number, len(batches)),
            )
        return images

    def _render_rows(self, latents, conditioning, planned, progress) -> list[Image.Image]:
        request, k = self.request, len(self.request.keyframes)
        return render_frames(
            self.ctx.model,
            latents,
            conditioning,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            attention=request.attention,
            row_weights=[None if p.keyframe is not None else p.weights(k) for p in planned],
            keyframes=self.keyframes,
            attention_steps=request.attention_steps,
            cache=self.ctx.attention_cache,
            progress=progress,
            on_references=self._note_sizes,
        )

    def _note_sizes(self, references) -> None:
        self.reference_bytes = [reference.nbytes for reference in references]

    def render_and_publish(
        self, job: Job, planned: list[PlannedFrame], frames: list[MorphFrame]
    ) -> list[Image.Image]:
        """Render the frames whose image is not stored yet, as /mix does: their mixed latents
        stored as latents, each finished batch uploaded and appended to the job's partial
        result. Returns every frame's image (stored ones read back, for the metrics)."""
        ctx = self.ctx
        mixed, conditioning = self.prepare(planned)
        stream = ImageStream(ctx, job, frames)
        # Morphs mix plain latents only (the API refuses others): no state, no method.
        rendered = stream.store_latents(
            lambda row: store_mixed_latent(ctx, _plain_state(ctx, mixed[row]), frames[row], None)
        )
        images: dict[int, Image.Image] = {}

        progress = progress_reporter(ctx.redis, job)
        with BatchPublisher(ctx.publishing) as publisher:
            batches = rows_to_render(
                rendered,
                ctx.model.max_batch_size,
                on_rendered=lambda rows: publisher.submit(functools.partial(stream.list, rows)),
            )
            for number, (rows, planned_batches) in enumerate(batches):
                pictures = self._render_rows(
                    mixed[rows],
                    select_rows(conditioning, rows),
                    [planned[i] for i in rows],
                    batch_progress(progress, number, planned_batches),
                )
                images.update(zip(rows, pictures, strict=True))
                publisher.submit(functools.partial(stream.publish, rows, pictures))
        images.update({c: images[row] for c, row in stream.copies.items() if row in images})
        stored = [i for i in range(len(frames)) if i not in images]
        pictures = ctx.storage.in_parallel(lambda i: _stored(ctx, frames[i]), stored)
        images.update(zip(stored, pictures, strict=True))
        return [images[i] for i in range(len(frames))]


def _stored(ctx: WorkerContext, frame: MorphFrame) -> Image.Image:
    image = Image.open(io.BytesIO(ctx.storage.get(image_key(frame.id))))
    image.load()
    return image


def _respaced(
    request: MorphRequest,
    planned: list[PlannedFrame],
    images: list[Image.Image],
    distance: FrameDistance = RGB_RMSE,
) -> list[list[float]]:
    """Each segment's coefficients re-spaced by the distances between its consecutive
    uniform frames (the segment's end keyframe is the next segment's first frame, or frame 0
    for a loop's last segment)."""
    closed = [*images, images[0]] if request.path == "loop" else images
    coefficients = []
    for segment, values in enumerate(_per_segment(planned, request.path)):
        first = next(i for i, p in enumerate(planned) if p.segment == segment)
        span = closed[first : first + len(values)]
        coefficients.append(respace_by_distance(values, distance.consecutive(span)))
    return coefficients


def _per_segment(planned: Sequence[PlannedFrame], path: str) -> list[list[float]]:
    """The coefficients of each segment, both ends included: a segment's end keyframe is
    planned once, as the next segment's first frame (a chain's last segment holds its own)."""
    segments: dict[int, list[float]] = {}
    for frame in planned:
        segments.setdefault(frame.segment, []).append(frame.coefficient)
    groups = list(segments.values())
    last = len(groups) - 1 if path == "chain" else None
    return [values if i == last else [*values, 1.0] for i, values in enumerate(groups)]


def _plain_state(ctx: WorkerContext, latent: torch.Tensor) -> Inverted:
    """One mixed frame latent as the state /mix publishes: a plain latent, no aux."""
    return Inverted(latent=latent[None], method=default_inversion(ctx.model.card).name)
