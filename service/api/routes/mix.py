"""POST /mix: mix latents with weights and generate an image per mix."""

import uuid

from fastapi import APIRouter, Request

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep
from latentmix.service.api.idempotency import stable_job_id
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.routes.jobs import public_job
from latentmix.service.api.schemas import JobPublic, MixCreate, SampleSpec
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.jobs import MIX_TASK, enqueue, fetch_job, model_of_queue, view_job
from latentmix.service.latents import LatentCatalog
from latentmix.service.mix_methods import canonical_method, check_weights
from latentmix.service.weight_sampling import sample_weights

router = APIRouter(tags=["mix"])


@router.post("/mix", status_code=202, response_model=JobPublic, responses=PROBLEM_RESPONSES)
def create_mix(
    body: MixCreate,
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
) -> JobPublic:
    """Queue a mix job; latents still being inverted are waited for."""
    mixes = body.sample.count if body.sample else len(_weight_rows(body.weights, 1))
    if mixes > settings.max_mixes_per_request:
        raise problem(
            422, f"{mixes} mixes in one request; the limit is {settings.max_mixes_per_request}"
        )
    try:
        method = canonical_method(body.method)
        rows = _weight_rows(body.weights, len(body.latents), body.sample)
        check_weights(rows, len(body.latents), method)
    except ValueError as exc:
        raise problem(422, str(exc)) from None
    # Normalised once here: [1, 1] and [0.5, 0.5] are the same mix, with the same ids.
    rows = [[w / sum(row) for w in row] for row in rows]
    model, producers = _inputs(catalog, redis, body.latents)
    webhook = checked_webhook(body.webhook, settings)
    job_id = stable_job_id(request) or uuid.uuid4().hex
    if (earlier := fetch_job(redis, job_id)) is not None:  # queued by a try whose answer was lost
        return public_job(view_job(redis, earlier), request)
    job = enqueue(
        redis,
        settings,
        task=MIX_TASK,
        model=model or settings.model,
        request={
            "latents": body.latents,
            "weights": rows,
            "method": method,
            "prompt": body.prompt,
            "steps": body.steps,
            "guidance_scale": body.guidance_scale,
            "producers": producers,
            "seed": body.sample.seed if body.sample else None,
        },
        job_id=job_id,
        depends_on=sorted(set(producers.values())) or None,
        webhook=webhook,
    )
    metrics.jobs_submitted.labels("mix").inc()
    return public_job(view_job(redis, job), request)


def _weight_rows(weights, count: int, sample: SampleSpec | None = None) -> list[list[float]]:
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


def _inputs(catalog: LatentCatalog, redis, latent_ids: list[str]) -> tuple[str | None, dict]:
    """Check every input exists (ready or pending) and shares one model and shape.

    Returns the model and, for pending inputs, the job that produces each."""
    models, shapes, producers = set(), set(), {}
    for latent_id in latent_ids:
        record = catalog.record(latent_id)
        if record is not None:
            models.add(record.model)
            shapes.add(tuple(record.shape))
            continue
        holder = catalog.pending_job(latent_id)
        job = fetch_job(redis, holder) if holder else None
        if job is None:
            raise problem(404, f"latent {latent_id} not found")
        models.add(model_of_queue(job.origin))
        producers[latent_id] = job.id
    if len(models) > 1:
        raise problem(422, f"latents from different models cannot be mixed: {sorted(models)}")
    if len(shapes) > 1:
        raise problem(422, f"latents of different shapes cannot be mixed: {sorted(shapes)}")
    return next(iter(models)), producers
