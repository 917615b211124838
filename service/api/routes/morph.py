"""POST /morph: frames between keyframes (shared/morph.md), streamed as images like a mix's
(planned by service/core/morph_planning.py)."""

from fastapi import APIRouter, Request

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep
from latentmix.service.api.idempotency import enqueue_once
from latentmix.service.api.job_views import public_job
from latentmix.service.api.morph_schemas import MorphCreate
from latentmix.service.api.problems import PROBLEM_RESPONSES
from latentmix.service.api.schemas import JobPublic, PlannedImage
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.core.contract import MORPH, MorphRequest
from latentmix.service.core.jobs import view_job
from latentmix.service.core.morph_planning import plan_morph_job

router = APIRouter(tags=["morph"])


@router.post("/morph", status_code=202, response_model=JobPublic, responses=PROBLEM_RESPONSES)
def create_morph(
    body: MorphCreate,
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
) -> JobPublic:
    """Queue a morph job: frames from keyframe to keyframe, each a mix of its two keyframes
    (keyframes still being inverted are waited for). The answer lists the frames the job will
    produce, except with perceptual spacing, whose coefficients come from a first pass."""
    planned = plan_morph_job(body, settings, redis, catalog)
    job = enqueue_once(
        request,
        redis,
        settings,
        metrics,
        job_type=MORPH,
        model=planned.model,
        contract=planned.request,
        depends_on=planned.depends_on,
        webhook=checked_webhook(body.webhook, settings),
    )
    answer = public_job(view_job(redis, job), request)
    return answer.model_copy(update={"planned": _planned(planned.request, request)})


def _planned(morph: MorphRequest, request: Request) -> list[PlannedImage] | None:
    """The frames the job will produce; None with perceptual spacing (a first pass decides)."""
    if morph.spacing == "perceptual":
        return None
    return [
        PlannedImage(
            id=frame.id,
            latent=frame.latent,
            weights=frame.provenance.weights,
            url=str(request.url_for("get_image", image_id=frame.id)),
        )
        for frame in (morph.frame(planned) for planned in morph.plan())
    ]
