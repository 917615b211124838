"""The evaluate job: generated images vs real ones -> FID, KID, CLIP distance."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from rq.job import Job

from latentmix.service.contract import EvaluateRequest, EvaluateResult
from latentmix.service.latents import evaluation_key, image_key
from latentmix.service.storage import in_parallel
from latentmix.worker.engine.metrics import (
    clip_distances,
    frechet_distance,
    kernel_inception_distance,
)
from latentmix.worker.engine.metrics.clip import load_clip
from latentmix.worker.runtime import WorkerContext
from latentmix.worker.tasks.reporting import progress_reporter, task


@task(EvaluateRequest)
def evaluate_images(ctx: WorkerContext, job: Job, request: EvaluateRequest) -> EvaluateResult:
    """Embed both sets with the CLIP image encoder of LATENTMIX_CLIP_MODEL and score them."""
    encoder = load_clip(ctx.settings.clip_model, str(ctx.model.device))
    progress = progress_reporter(ctx.redis, job)
    keys = [image_key(i) for i in request.generated] + request.references
    progress(0, len(keys))
    generated = encoder.embed(_images(ctx, keys[: len(request.generated)]))
    progress(len(request.generated), len(keys))
    references = encoder.embed(_images(ctx, request.references))
    progress(len(keys), len(keys))
    result = score(encoder.features, request.label, generated, references)
    stored = {"model": ctx.settings.model, "result": result.model_dump(mode="json")}
    ctx.storage.put(evaluation_key(job.id), json.dumps(stored).encode(), "application/json")
    return result


def score(
    features: str, label: str | None, generated: np.ndarray, references: np.ndarray
) -> EvaluateResult:
    """The result's figures from the two embedding sets."""
    distances = clip_distances(generated, references)
    both_sets = len(generated) >= 2 and len(references) >= 2
    return EvaluateResult(
        features=features,
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

    return in_parallel(fetch, keys)
