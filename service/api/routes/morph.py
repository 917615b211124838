"""POST /morph: frames between keyframes (shared/morph.md), streamed as images like a mix's."""

from fastapi import APIRouter, Request

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep
from latentmix.service.api.idempotency import enqueue_once
from latentmix.service.api.models import card_of, guidance_for
from latentmix.service.api.morph_schemas import MorphCreate
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.routes.jobs import public_job
from latentmix.service.api.routes.mix import resolve_inputs
from latentmix.service.api.schemas import JobPublic, PlannedImage
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.core.contract import DEFAULT_STEPS, MORPH, MorphRequest, shared_value
from latentmix.service.core.jobs import view_job
from latentmix.service.core.mix_methods import canonical_method, check_weights
from latentmix.service.core.model_cards import check_attention
from latentmix.service.core.morph_plan import check_morph

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
    if len(body.keyframes) > settings.max_morph_frames:
        raise problem(
            422,
            f"{len(body.keyframes)} keyframes in one morph; frames (keyframes included) are "
            f"limited to {settings.max_morph_frames} (LATENTMIX_MAX_MORPH_FRAMES)",
        )
    # The keyframes first: one that does not exist (404) says more than a plan that does
    # not fit them.
    inputs = resolve_inputs(catalog, redis, body.keyframes)
    model = inputs.model or settings.model
    try:
        check_morph(
            len(body.keyframes),
            body.frames,
            path=body.path,
            spacing=body.spacing,
            alpha=body.alpha,
            beta=body.beta,
            attention=body.attention,
            attention_steps=body.attention_steps,
            max_frames=settings.max_morph_frames,
        )
        method = canonical_method(body.method)
        check_attention(redis, model, body.attention)
    except ValueError as exc:
        raise problem(422, str(exc)) from None
    morph = MorphRequest(
        keyframes=body.keyframes,
        prompts=_prompts(body.prompts, inputs.prompts),
        guide_prompt=body.guide_prompt,
        frames=body.frames,
        path=body.path,
        spacing=body.spacing,
        alpha=body.alpha,
        beta=body.beta,
        method=method,
        attention=body.attention,
        attention_steps=body.attention_steps,
        steps=body.steps or shared_value(inputs.steps) or DEFAULT_STEPS,
        guidance_scale=guidance_for(body.guidance_scale, card_of(model, redis)),
        seed=body.seed,
        producers=inputs.producers,
    )
    frames = [morph.frame(planned) for planned in morph.plan()]
    try:
        check_weights([f.provenance.weights for f in frames], len(body.keyframes), method)
    except ValueError as exc:
        raise problem(422, str(exc)) from None
    webhook = checked_webhook(body.webhook, settings)
    job = enqueue_once(
        request,
        redis,
        settings,
        metrics,
        job_type=MORPH,
        model=model,
        contract=morph,
        depends_on=sorted(set(inputs.producers.values())) or None,
        webhook=webhook,
    )
    planned = None
    if morph.spacing != "perceptual":
        planned = [
            PlannedImage(
                id=frame.id,
                latent=frame.latent,
                weights=frame.provenance.weights,
                url=str(request.url_for("get_image", image_id=frame.id)),
            )
            for frame in frames
        ]
    return public_job(view_job(redis, job), request).model_copy(update={"planned": planned})


def _prompts(asked: str | list[str] | None, inverted: list[str | None]) -> list[str]:
    """One prompt per keyframe: as asked, or each keyframe's inversion prompt."""
    if isinstance(asked, str):
        return [asked] * len(inverted)
    if asked is None:
        return [prompt or "" for prompt in inverted]
    if len(asked) != len(inverted):
        raise problem(
            422, f"{len(asked)} prompts for {len(inverted)} keyframes; give one per keyframe"
        )
    return asked
