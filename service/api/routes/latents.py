"""POST /latents (invert images, store uploaded latents), GET /latents/{id}[/data]."""

import uuid
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
from latentmix.service.api.uploads import MAX_SIZE, MIN_SIZE, read_image
from latentmix.service.api.webhooks import checked_webhook
from latentmix.service.core.contract import (
    DEFAULT_STEPS,
    INVERT,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_STEPS,
    InvertItem,
    InvertRequest,
)
from latentmix.service.core.ids import ID_RE, image_latent_id, uploaded_latent_id
from latentmix.service.core.jobs import enqueue, fetch_job, view_job
from latentmix.service.core.latents import (
    InvalidLatent,
    LatentCatalog,
    LatentRecord,
    decode_latent,
    latent_key,
    upload_key,
)
from latentmix.service.core.model_card import ModelCard
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
    settings: SettingsDep,
    redis: RedisDep,
    storage: StorageDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
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
    inversion_choice: InversionForm = Depends(inversion_form),  # noqa: B008
) -> LatentsCreated:
    """Invert images into noise latents (cached by content) and store uploaded latents."""
    if not images and not latents:
        raise problem(422, "send at least one file part named 'images' or 'latents'")
    prompts = _prompts_for(prompt, len(images))
    model = resolve_model(model, settings, redis)
    card = card_of(model, redis)
    _check_size(size, card)
    inversion = inversion_choice.settings(
        card, inversion_steps, guidance_for(guidance_scale, card, "inversion"), size
    )
    webhook_url = checked_webhook(webhook, settings)
    job_id = uuid.uuid4().hex
    claim_ttl = settings.job_timeout_s + 600
    entries: list[LatentEntry] = []
    work: list[dict] = []
    planned: set[str] = set()
    # Every file is checked before anything is claimed, stored or queued.
    image_data = [read_image(upload, settings.max_image_pixels) for upload in images]
    latent_arrays = [_read_latent(upload, card) for upload in latents]
    latent_ids = [
        image_latent_id(data, model, inversion.id_fields() | {"prompt": image_prompt})
        for data, image_prompt in zip(image_data, prompts, strict=True)
    ]
    # A new image's lookup misses Redis and asks storage: those round trips side by side.
    stored = catalog.storage.in_parallel(
        lambda latent_id: catalog.record(latent_id) is not None, latent_ids
    )
    for upload, data, image_prompt, latent_id, is_stored in zip(
        images, image_data, prompts, latent_ids, stored, strict=True
    ):
        entry = _image_entry(
            catalog, latent_id, is_stored, job_id, claim_ttl, upload.filename, planned
        )
        if entry.job == job_id and latent_id not in planned:
            planned.add(latent_id)
            work.append({"latent_id": latent_id, "data": data, "prompt": image_prompt})
        entries.append(entry)
    entries += [
        _store_uploaded_latent(catalog, upload, array, model)
        for upload, array in zip(latents, latent_arrays, strict=True)
    ]
    for entry in entries:
        metrics.cache.labels("hit" if entry.cached else "miss").inc()

    if not work:
        response.status_code = 200
        return LatentsCreated(latents=entries, job=None)
    try:
        request = InvertRequest(
            items=_store_uploads(storage, work),
            settings=inversion,
            measure_reconstruction=inversion_choice.measure_reconstruction,
        )
        job = enqueue(
            redis,
            settings,
            job_type=INVERT,
            model=model,
            request=request,
            job_id=job_id,
            webhook=webhook_url,
        )
    except Exception:
        catalog.release([w["latent_id"] for w in work], job_id)
        raise
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


def _prompts_for(prompts: list[str], image_count: int) -> list[str]:
    for index, prompt in enumerate(prompts):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise problem(
                422, f"prompt {index} has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}"
            )
    if len(prompts) <= 1:
        return (prompts or [""]) * image_count
    if len(prompts) != image_count:
        raise problem(
            422, f"got {len(prompts)} prompts for {image_count} images: send one, or one per image"
        )
    return prompts


def _image_entry(
    catalog: LatentCatalog,
    latent_id: str,
    is_stored: bool,
    job_id: str,
    claim_ttl: int,
    filename: str | None,
    planned: set[str],
) -> LatentEntry:
    """Cached, pending on another job, or claimed for this request's job."""
    if is_stored:
        return LatentEntry(
            id=latent_id, status="ready", cached=True, job=None, filename=filename, source="image"
        )
    if latent_id in planned:
        holder = job_id  # the same image twice in one request
    else:
        holder = catalog.claim(latent_id, job_id, claim_ttl) or job_id
    return LatentEntry(
        id=latent_id,
        status="pending",
        cached=holder != job_id,
        job=holder,
        filename=filename,
        source="image",
    )


def _check_size(size: int | None, card: ModelCard | None) -> None:
    if size is not None and card is not None and size % card.pixel_multiple:
        raise problem(
            422,
            f"size {size} is not a multiple of {card.pixel_multiple} pixels, the size multiple "
            f"of model {card.model!r} ({card.family})",
        )


def _read_latent(upload: UploadFile, card: ModelCard | None) -> np.ndarray:
    """A latent file as `decode_latent` checks it, with the model's channels and a spatial
    size the model accepts (images of MIN_SIZE to MAX_SIZE pixels, sides a multiple of the
    model's size multiple)."""
    channels = card.latent_channels if card else None
    try:
        array = decode_latent(upload.file.read(), channels)
    except InvalidLatent as exc:
        model = f" for model {card.model!r}" if card else ""
        raise problem(422, f"{upload.filename!r}: {exc}{model}") from None
    scale = card.vae_scale_factor if card else 8
    cells = card.pixel_multiple // scale if card else 1  # SD 3: the transformer's patch
    smallest, largest = MIN_SIZE // scale, MAX_SIZE // scale
    height, width = array.shape[1:]
    if not (smallest <= height <= largest and smallest <= width <= largest):
        raise problem(
            422,
            f"{upload.filename!r}: latent is {height}x{width}; each side must be in "
            f"[{smallest}, {largest}] (images of {MIN_SIZE} to {MAX_SIZE} pixels)",
        )
    if height % cells or width % cells:
        raise problem(
            422,
            f"{upload.filename!r}: latent is {height}x{width}; each side must be a multiple "
            f"of {cells} for model {card.model!r} (its transformer's patch size)",
        )
    return array


def _store_uploaded_latent(
    catalog: LatentCatalog, upload: UploadFile, array: np.ndarray, model: str
) -> LatentEntry:
    latent_id = uploaded_latent_id(array, model)
    known = catalog.record(latent_id) is not None
    if not known:
        catalog.publish(
            LatentRecord.describe(latent_id, array, model=model, source="upload"), array
        )
    return LatentEntry(
        id=latent_id,
        status="ready",
        cached=known,
        job=None,
        filename=upload.filename,
        source="upload",
    )


def _store_uploads(storage, work: list[dict]) -> list[InvertItem]:
    """Store the images to invert (side by side); the job's items name them."""
    keys = [upload_key(item["data"]) for item in work]
    storage.in_parallel(
        lambda key, item: storage.put(key, item["data"], "application/octet-stream"), keys, work
    )
    return [
        InvertItem(latent_id=item["latent_id"], upload_key=key, prompt=item["prompt"])
        for key, item in zip(keys, work, strict=True)
    ]
