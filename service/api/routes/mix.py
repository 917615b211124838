"""POST /mix: mix latents with weights and generate an image per mix (planned by
service/core/mix_planning.py)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep
from latentmix.service.api.idempotency import enqueue_once
from latentmix.service.api.job_views import public_job
from latentmix.service.api.problems import PROBLEM_RESPONSES
from latentmix.service.api.schemas import DryRunRow, JobPublic, MixCreate, MixDryRun, PlannedImage
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.core.contract import MIX, MixRequest
from latentmix.service.core.jobs import view_job
from latentmix.service.core.mix_planning import dry_run, plan_mix_job

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
    planned = plan_mix_job(body, settings, redis, catalog)
    mix = planned.request
    if body.dry_run:
        return JSONResponse(_dry_run(catalog, mix, settings).model_dump(mode="json"))
    job = enqueue_once(
        request,
        redis,
        settings,
        metrics,
        job_type=MIX,
        model=planned.model,
        contract=mix,
        depends_on=planned.depends_on,
        webhook=checked_webhook(body.webhook, settings),
    )
    return public_job(view_job(redis, job), request).model_copy(
        update={"planned": [_planned(mix, index, request) for index in range(len(mix.rows))]}
    )


def _dry_run(catalog, mix: MixRequest, settings) -> MixDryRun:
    rows = [
        DryRunRow(weights=row.weights, latent=row.latent, image=row.image, diagnostics=found)
        for row, found in zip(mix.rows, dry_run(catalog, mix, settings), strict=True)
    ]
    return MixDryRun(method=mix.method, rows=rows)


def _planned(mix: MixRequest, index: int, request: Request) -> PlannedImage:
    row = mix.rows[index]
    url = str(request.url_for("get_image", image_id=row.image))
    return PlannedImage(id=row.image, latent=row.latent, weights=row.weights, url=url)
