"""The evaluate job: generated images vs real ones -> FID, KID, CLIP distance."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from rq.job import Job

from latentmix.service.core.contract import EvaluateRequest, EvaluateResult
from latentmix.service.core.latents import evaluation_key, image_key
from latentmix.worker.engine.metrics import (
    clip_distances,
    frechet_distance,
    kernel_inception_distance,
)
from latentmix.worker.engine.shapes.classifier import judge
from latentmix.worker.engine.shapes.evaluation import JudgeEncoder, to_tensor
from latentmix.worker.engine.shapes.model import JUDGE, NATIVE_SIZE
from latentmix.worker.runtime import WorkerContext
from latentmix.worker.tasks.reporting import progress_reporter, task


@task(EvaluateRequest)
def evaluate_images(ctx: WorkerContext, job: Job, request: EvaluateRequest) -> EvaluateResult:
    """Embed both sets with the CLIP image encoder of LATENTMIX_CLIP_MODEL (the CLIP distance)
    and, for FID and KID, with it or the Inception of LATENTMIX_INCEPTION_WEIGHTS (features
    "judge": both with the model's judge); with `judge`, only read each image's class with
    the model's judge."""
    result = judge_images(ctx, request) if request.judge else _scores(ctx, job, request)
    stored = {"model": ctx.settings.model, "result": result.model_dump(mode="json")}
    ctx.storage.put(evaluation_key(job.id), json.dumps(stored).encode(), "application/json")
    return result


def judge_images(ctx: WorkerContext, request: EvaluateRequest) -> EvaluateResult:
    """The label the model's judge (its card's augmentation.judge) reads in each image."""
    _require_judge(ctx)
    images = _images(ctx, [image_key(i) for i in request.generated])
    pixels = to_tensor([image.convert("RGB").resize((NATIVE_SIZE,) * 2) for image in images])
    readings = judge(ctx.shapes_classifier(), pixels)
    return EvaluateResult(
        features=None,
        clip_features=None,
        label=request.label,
        generated=len(images),
        references=0,
        clip_distance=None,
        clip_distance_std=None,
        clip_distances=None,
        fid=None,
        kid=None,
        judge=JUDGE,
        judged=[label for label, _ in readings],
        judge_confidences=[confidence for _, confidence in readings],
    )


def _require_judge(ctx: WorkerContext) -> None:
    augmentation = ctx.model.augmentation
    if augmentation is None or augmentation.judge != JUDGE:
        raise ValueError(f"model {ctx.settings.model!r} has no judge (its card names none)")


def _encoders(ctx: WorkerContext, features: str):
    """The encoders of the distance and of FID/KID."""
    if features == "judge":
        _require_judge(ctx)
        judge = JudgeEncoder(ctx.shapes_classifier())
        return judge, judge
    clip = ctx.clip()
    return clip, ctx.inception() if features == "inception" else clip


def _scores(ctx: WorkerContext, job: Job, request: EvaluateRequest) -> EvaluateResult:
    clip, fid_encoder = _encoders(ctx, request.features)
    progress = progress_reporter(ctx.redis, job)
    generated = _images(ctx, [image_key(i) for i in request.generated])
    references = _images(ctx, request.references)
    progress(0, 2)
    embedded = clip.embed(generated), clip.embed(references)
    progress(1, 2)
    if fid_encoder is not clip:
        fid_features = fid_encoder.embed(generated), fid_encoder.embed(references)
    else:
        fid_features = embedded
    progress(2, 2)
    return score(
        request.label, embedded, fid_features, clip=clip.features, fid=fid_encoder.features
    )


def score(
    label: str | None,
    clip_sets: tuple[np.ndarray, np.ndarray],
    fid_sets: tuple[np.ndarray, np.ndarray],
    *,
    clip: str,
    fid: str,
) -> EvaluateResult:
    """The result's figures from the (generated, references) embeddings of each encoder."""
    distances = clip_distances(*clip_sets)
    generated, references = fid_sets
    both_sets = len(generated) >= 2 and len(references) >= 2
    return EvaluateResult(
        features=fid,
        clip_features=clip,
        label=label,
        generated=len(generated),
        references=len(references),
        clip_distance=float(distances.mean()),
        clip_distance_std=float(distances.std()),
        clip_distances=distances.tolist(),
        fid=frechet_distance(generated, references) if both_sets else None,
        kid=kernel_inception_distance(generated, references) if both_sets else None,
    )


def _images(ctx: WorkerContext, keys: list[str]) -> list[Image.Image]:
    def fetch(key: str) -> Image.Image:
        image = Image.open(io.BytesIO(ctx.storage.get(key)))
        image.load()
        return image

    return ctx.storage.in_parallel(fetch, keys)
