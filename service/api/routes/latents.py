"""POST /latents (invert images, store uploaded latents; planned by
service/core/latent_planning.py), GET /latents/{id}[/data]."""

from dataclasses import asdict, dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Request, Response, UploadFile

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep, StorageDep
from latentmix.service.api.inversion_form import (
    INVERSION_FORM_FIELDS,
    InversionForm,
    inversion_form,
)
from latentmix.service.api.job_views import public_job
from latentmix.service.api.models import card_of, resolve_model
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.schemas import (
    LatentEntry,
    LatentPublic,
    LatentsCreated,
    WebhookUrl,
    unknown_fields,
)
from latentmix.service.api.uploads import read_image
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.core.contract import (
    DEFAULT_STEPS,
    MAX_GUIDANCE,
    MAX_STEPS,
    InversionSettings,
)
from latentmix.service.core.ids import ID_RE
from latentmix.service.core.jobs import fetch_job, view_job
from latentmix.service.core.latent_planning import (
    MAX_SIZE,
    MIN_SIZE,
    InversionPlan,
    check_size,
    enqueue_inversion,
    plan_latents,
    prompts_for,
    read_latent,
)
from latentmix.service.core.latents import (
    latent_key,
)
from latentmix.service.core.model_cards import guidance_for

router = APIRouter(tags=["latents"])

LatentIdPath = Annotated[str, Path(pattern=ID_RE.pattern)]
# The form fields of POST /latents, as create_latents declares them.
FORM_FIELDS = (
    "images",
    "latents",
    "prompt",
    "model",
    "inversion_steps",
    "guidance_scale",
    "size",
    "webhook",
    *INVERSION_FORM_FIELDS,
)


async def known_form_fields(request: Request) -> None:
    """Refuse form parts whose name POST /latents does not know (a typo such as `promt`
    must not silently fall back to a default). The form is parsed already: this reads
    FastAPI's cached copy."""
    if "multipart/form-data" not in request.headers.get("content-type", "") and (
        "application/x-www-form-urlencoded" not in request.headers.get("content-type", "")
    ):
        return
    form = await request.form()
    unknown = [name for name in dict.fromkeys(form.keys()) if name not in FORM_FIELDS]
    if unknown:
        raise problem(422, f"{unknown_fields(unknown)}; allowed: {', '.join(FORM_FIELDS)}")


class LatentsForm:
    """POST /latents' form: the files, and the model and inversion they ask for."""

    def __init__(
        self,
        images: Annotated[
            list[UploadFile], File(min_length=1, description="PNG, JPEG or WebP images")
        ] = [],  # noqa: B006
        latents: Annotated[
            list[UploadFile],
            File(
                min_length=1,
                description="safetensors files, one tensor `latent` [C, H, W] (C: the model's)",
            ),
        ] = [],  # noqa: B006
        prompt: Annotated[
            list[str], Form(description="one prompt for all images, or one per image")
        ] = [],  # noqa: B006
        model: Annotated[str | None, Form(description="default: the configured model")] = None,
        inversion_steps: Annotated[int, Form(ge=1, le=MAX_STEPS)] = DEFAULT_STEPS,
        guidance_scale: Annotated[
            float | None,
            Form(
                ge=0.0,
                le=MAX_GUIDANCE,
                allow_inf_nan=False,
                description="default: the model's (7.5 SD, 4.5 SD 3)",
            ),
        ] = None,
        size: Annotated[
            int | None,
            Form(ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description="default: the model's"),
        ] = None,
        webhook: Annotated[WebhookUrl | None, Form()] = None,
        inversion: InversionForm = Depends(inversion_form),  # noqa: B008
    ):
        self.images, self.latents, self.prompt, self.model = images, latents, prompt, model
        self.steps, self.guidance_scale, self.size = inversion_steps, guidance_scale, size
        self.webhook, self.inversion = webhook, inversion

    def parse(self, settings, redis) -> "_Parsed":
        """The model, the inversion settings, the webhook, the images (filename, bytes,
        prompt) and the uploaded latents (filename, array), every file checked before
        anything is claimed, stored or queued."""
        if not self.images and not self.latents:
            raise problem(422, "send at least one file part named 'images' or 'latents'")
        prompts = prompts_for(self.prompt, len(self.images))
        model = resolve_model(self.model, settings, redis)
        card = card_of(model, redis)
        check_size(self.size, card)
        guidance = guidance_for(self.guidance_scale, card, "inversion")
        inversion = self.inversion.settings(card, self.steps, guidance, self.size)
        webhook = checked_webhook(self.webhook, settings)
        images = [
            (upload.filename, read_image(upload, settings.max_image_pixels), image_prompt)
            for upload, image_prompt in zip(self.images, prompts, strict=True)
        ]
        latents = [(u.filename, read_latent(u.file.read(), u.filename, card)) for u in self.latents]
        return _Parsed(InversionPlan(model), inversion, webhook, images, latents)


@dataclass(frozen=True)
class _Parsed:
    plan: InversionPlan
    inversion: InversionSettings
    webhook: str | None
    images: list[tuple[str | None, bytes, str]]
    latents: list[tuple[str | None, np.ndarray]]


@router.post(
    "/latents",
    status_code=202,
    response_model=LatentsCreated,
    responses={200: {"model": LatentsCreated, "description": "every latent already known"}}
    | PROBLEM_RESPONSES,
    dependencies=[Depends(known_form_fields)],
    # At least one file part, of either name (the route says so with a 422, the schema here).
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {"anyOf": [{"required": ["images"]}, {"required": ["latents"]}]}
                }
            }
        }
    },
)
def create_latents(
    response: Response,
    form: Annotated[LatentsForm, Depends()],
    settings: SettingsDep,
    redis: RedisDep,
    storage: StorageDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
) -> LatentsCreated:
    """Invert images into noise latents (cached by content) and store uploaded latents."""
    asked = form.parse(settings, redis)
    claim_ttl = settings.job_timeout_s + 600
    plan = plan_latents(
        catalog, asked.plan, asked.inversion, asked.images, asked.latents, claim_ttl
    )
    entries = [LatentEntry(**asdict(latent)) for latent in plan.latents]
    for entry in entries:
        metrics.cache.labels("hit" if entry.cached else "miss").inc()
    if not plan.claimed:
        response.status_code = 200
        return LatentsCreated(latents=entries, job=None)
    measure = form.inversion.measure_reconstruction
    job = enqueue_inversion(
        redis, settings, storage, catalog, plan, asked.inversion, measure, asked.webhook
    )
    metrics.jobs_submitted.labels("invert").inc()
    return LatentsCreated(latents=entries, job=public_job(view_job(redis, job)))


@router.get("/latents/{latent_id}", response_model=LatentPublic, responses=PROBLEM_RESPONSES)
def get_latent(latent_id: LatentIdPath, catalog: CatalogDep, redis: RedisDep) -> LatentPublic:
    """A latent's metadata: status, model, settings, shape, norm, per-channel means."""
    record = catalog.record(latent_id)
    if record is not None:
        return LatentPublic(**record.model_dump())
    holder = catalog.pending_job(latent_id)
    job = fetch_job(redis, holder) if holder else None
    if job is None:
        raise problem(404, f"latent {latent_id} not found")
    view = view_job(redis, job)
    if view.status.is_terminal():
        return LatentPublic(id=latent_id, status="failed", job=job.id, error=view.error)
    return LatentPublic(id=latent_id, status="pending", job=job.id)


@router.get(
    "/latents/{latent_id}/data",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}} | PROBLEM_RESPONSES,
)
def get_latent_data(latent_id: LatentIdPath, catalog: CatalogDep, storage: StorageDep) -> Response:
    """The latent as a safetensors file with one tensor named `latent`."""
    if catalog.record(latent_id) is None:
        raise problem(404, f"latent {latent_id} not found or not ready")
    return Response(
        storage.get(latent_key(latent_id)),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{latent_id}.safetensors"'},
    )
