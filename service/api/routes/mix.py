"""POST /mix: mix latents with weights and generate an image per mix."""

from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep
from latentmix.service.api.idempotency import enqueue_once
from latentmix.service.api.models import card_of, check_same_model, guidance_for
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.routes.jobs import public_job
from latentmix.service.api.schemas import (
    DryRunRow,
    JobPublic,
    MixCreate,
    MixDryRun,
    PlannedImage,
    SampleSpec,
)
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.core.contract import (
    DEFAULT_INVERSION,
    DEFAULT_STEPS,
    INVERT,
    MIX,
    InvertRequest,
    MixRequest,
    plan_mix,
    shared_value,
)
from latentmix.service.core.diagnostics import InputStatistics, Thresholds, diagnose
from latentmix.service.core.inversion_mixing import (
    InversionOrigin,
    check_generation_steps,
    origin_of_record,
    shared_origin,
)
from latentmix.service.core.jobs import fetch_job, job_type_of, model_of_queue, view_job
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.mix_methods import canonical_method, check_weights
from latentmix.service.core.model_cards import check_attention
from latentmix.service.core.storage import in_parallel
from latentmix.service.core.weight_sampling import sample_weights

router = APIRouter(tags=["mix"])


DRY_RUN_RESPONSE = {
    200: {"model": MixDryRun, "description": "dry_run: each row's diagnostics; nothing queued"}
}


@router.post(
    "/mix",
    status_code=202,
    response_model=JobPublic,
    responses={**DRY_RUN_RESPONSE, **PROBLEM_RESPONSES},
)
def create_mix(
    body: MixCreate,
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
) -> JobPublic | JSONResponse:
    """Queue a mix job; latents still being inverted are waited for. The answer lists the
    images the job will produce (ids and URLs), known before it runs."""
    if len(body.latents) > settings.max_latents_per_mix:
        raise problem(
            422,
            f"{len(body.latents)} latents in one mix; the limit is {settings.max_latents_per_mix} "
            "(LATENTMIX_MAX_LATENTS_PER_MIX)",
        )
    # Then the inputs (their number is bounded now): a latent that does not exist (404) says
    # more than weights that do not fit it. Then the rows, bounded before any is drawn.
    inputs = resolve_inputs(catalog, redis, body.latents)
    origin = _origin(inputs, redis, settings)
    mixes = body.sample.count if body.sample else len(_weight_rows(body.weights, 1))
    if mixes > settings.max_mixes_per_request:
        raise problem(
            422,
            f"{mixes} mixes in one request; the limit is {settings.max_mixes_per_request} "
            "(LATENTMIX_MAX_MIXES_PER_REQUEST)",
        )
    steps = body.steps or shared_value(inputs.steps) or DEFAULT_STEPS
    try:
        method = canonical_method(body.method)
        rows = _weight_rows(body.weights, len(body.latents), body.sample)
        check_weights(rows, len(body.latents), method)
        check_generation_steps(origin, steps)
        check_attention(redis, inputs.model or settings.model, body.attention)
    except ValueError as exc:
        raise problem(422, str(exc)) from None
    model = inputs.model or settings.model
    # plain latents (the default method, no options: uploads, DDIM) are sampled as always
    default_method = origin.method == _default_method(model, redis) and not origin.options
    if body.attention != "none" and not default_method:
        raise problem(
            422,
            f"attention interpolation mixes plain latents only; these are {origin.describe()} "
            "latents: send attention 'none'",
        )
    mix = plan_mix(
        latents=body.latents,
        rows=rows,
        method=method,
        prompt=body.prompt if body.prompt is not None else (shared_value(inputs.prompts) or ""),
        steps=steps,
        guidance_scale=guidance_for(body.guidance_scale, card_of(model, redis)),
        seed=body.sample.seed if body.sample else None,
        producers=inputs.producers,
        attention=body.attention,
        attention_steps=body.attention_steps,
        inversion=None if default_method else origin.method,
        inversion_settings=None if default_method else origin.record_settings(),
    )
    if body.dry_run:
        return JSONResponse(_dry_run(catalog, mix, settings).model_dump(mode="json"))
    webhook = checked_webhook(body.webhook, settings)
    job = enqueue_once(
        request,
        redis,
        settings,
        metrics,
        job_type=MIX,
        model=model,
        contract=mix,
        depends_on=sorted(set(inputs.producers.values())) or None,
        webhook=webhook,
    )
    return public_job(view_job(redis, job), request).model_copy(
        update={"planned": [_planned(mix, index, request) for index in range(len(mix.rows))]}
    )


def _dry_run(catalog: LatentCatalog, mix: MixRequest, settings) -> MixDryRun:
    """The diagnostics of every row, from the stored inputs: no job, no UNet, no mix."""
    if mix.producers:
        pending = sorted(mix.producers)[0]
        raise problem(
            409,
            f"latent {pending} is still being computed (job {mix.producers[pending]}); "
            "dry_run needs every input ready",
        )
    # Only the inputs some row uses are read (a subset sample uses few of a large pool).
    weights = np.asarray(mix.weights)
    used = np.arange(len(mix.latents))
    if mix.method != "slerp":  # slerp's angle needs both inputs whatever the weights
        used = np.flatnonzero(weights.any(axis=0))
    latents = np.stack(in_parallel(catalog.load, [mix.latents[i] for i in used]))
    found = diagnose(
        InputStatistics.of(latents), weights[:, used], mix.method, Thresholds.of(settings)
    )
    rows = [
        DryRunRow(weights=row.weights, latent=row.latent, image=row.image, diagnostics=d)
        for row, d in zip(mix.rows, found, strict=True)
    ]
    return MixDryRun(method=mix.method, rows=rows)


def _planned(mix: MixRequest, index: int, request: Request) -> PlannedImage:
    row = mix.rows[index]
    url = str(request.url_for("get_image", image_id=row.image))
    return PlannedImage(id=row.image, latent=row.latent, weights=row.weights, url=url)


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


@dataclass
class _Inputs:
    """What the API knows of a mix's inputs: their model, prompts and inversion steps, how
    each was inverted, and the jobs still producing some of them."""

    model: str | None = None
    prompts: list[str | None] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    producers: dict[str, str] = field(default_factory=dict)
    # latent id -> (inversion method or None for the default, its settings)
    inversions: dict[str, tuple[str | None, dict]] = field(default_factory=dict)


def _default_method(model: str, redis) -> str:
    card = card_of(model, redis)
    return card.inversion_methods[0] if card else DEFAULT_INVERSION


def _origin(inputs: _Inputs, redis, settings) -> InversionOrigin:
    """The inputs' one inversion origin; a 422 naming two that differ."""
    default = _default_method(inputs.model or settings.model, redis)
    origins = {
        latent_id: origin_of_record(inversion, recorded, default)
        for latent_id, (inversion, recorded) in inputs.inversions.items()
    }
    try:
        return shared_origin(origins)
    except ValueError as exc:
        raise problem(422, str(exc)) from None


def resolve_inputs(catalog: LatentCatalog, redis, latent_ids: list[str]) -> _Inputs:
    """Check every input exists (ready or pending) and shares one model and shape; read
    each one's prompt and steps from its record, or from the request of its pending job."""
    inputs, models, shapes = _Inputs(), set(), set()
    pending: dict[str, _PendingJob | None] = {}  # by job id: one job usually holds many inputs
    cached = catalog.cached_records(latent_ids)
    for latent_id, record in zip(latent_ids, cached, strict=True):
        record = record or catalog.record(latent_id)  # not in Redis: storage says
        if record is not None:
            models.add(record.model)
            shapes.add(tuple(record.shape))
            inputs.prompts.append(record.prompt)
            inputs.steps.append(record.settings.get("steps"))
            inputs.inversions[latent_id] = (record.inversion, record.settings)
            continue
        holder = catalog.pending_job(latent_id)
        if holder and holder not in pending:
            pending[holder] = _PendingJob.fetch(redis, holder)
        job = pending.get(holder) if holder else None
        if job is None:
            raise problem(404, f"latent {latent_id} not found")
        models.add(job.model)
        inputs.producers[latent_id] = job.id
        inputs.prompts.append(job.prompts.get(latent_id))
        inputs.steps.append(job.steps)
        inputs.inversions[latent_id] = (job.inversion, job.inversion_settings)
    check_same_model(models, redis)
    if len(shapes) > 1:
        raise problem(422, f"latents of different shapes cannot be mixed: {sorted(shapes)}")
    inputs.model = next(iter(models))
    return inputs


@dataclass
class _PendingJob:
    """A job still producing inputs: its model, and the prompt and steps it was asked to
    invert each of its latents with (none for a mix job's latents)."""

    id: str
    model: str | None
    prompts: dict[str, str]
    steps: int | None
    inversion: str | None = None  # as a record will say (None: the model's default)
    inversion_settings: dict = field(default_factory=dict)

    @classmethod
    def fetch(cls, redis, job_id: str) -> "_PendingJob | None":
        job = fetch_job(redis, job_id)
        if job is None:
            return None
        model = model_of_queue(job.origin)
        if job_type_of(job) is MIX:
            mix = MixRequest.model_validate(job.args[0])
            return cls(job.id, model, {}, None, mix.inversion, mix.inversion_settings)
        if job_type_of(job) is not INVERT:
            return cls(job.id, model, {}, None)
        inversion = InvertRequest.model_validate(job.args[0])
        prompts = {item.latent_id: item.prompt for item in inversion.items}
        settings = inversion.settings
        recorded = {"steps": settings.steps, "method": settings.method, **settings.options()}
        return cls(job.id, model, prompts, settings.steps, settings.method, recorded)
