"""POST /evaluations (score generated images against real ones), GET /evaluations/{id}."""

import json
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import StringConstraints

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep, StorageDep
from latentmix.service.api.idempotency import enqueue_once
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.routes.jobs import JobIdPath, public_job
from latentmix.service.api.routes.latents import _read_image
from latentmix.service.api.schemas import JobPublic
from latentmix.service.core.contract import EVALUATE, MIX, EvaluateRequest, MixRequest
from latentmix.service.core.ids import ID_RE
from latentmix.service.core.jobs import (
    JobStatus,
    fetch_job,
    job_type_of,
    model_of_queue,
    view_job,
)
from latentmix.service.core.latents import LatentCatalog, evaluation_key, image_key, upload_key
from latentmix.service.core.storage import NotFound, in_parallel

router = APIRouter(tags=["evaluations"])

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
ContentId = Annotated[str, StringConstraints(pattern=ID_RE.pattern)]


@router.post("/evaluations", status_code=202, response_model=JobPublic, responses=PROBLEM_RESPONSES)
def create_evaluation(
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    storage: StorageDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
    job: Annotated[
        str | None,
        Form(
            pattern=JOB_ID_PATTERN,
            description="a mix job whose images are scored (waited for if unfinished)",
        ),
    ] = None,
    images: Annotated[
        list[ContentId], Form(description="generated image ids, instead of job")
    ] = [],  # noqa: B006
    reference_latents: Annotated[
        list[ContentId], Form(description="latent ids whose source images are the references")
    ] = [],  # noqa: B006
    references: Annotated[
        list[UploadFile], File(description="reference images (PNG, JPEG or WebP)")
    ] = [],  # noqa: B006
    label: Annotated[str | None, Form(max_length=200, description="e.g. the class")] = None,
    features: Annotated[
        Literal["clip", "inception"],
        Form(
            description="FID/KID features: CLIP (LATENTMIX_CLIP_MODEL) or Inception "
            "(LATENTMIX_INCEPTION_WEIGHTS); the CLIP distance always uses CLIP"
        ),
    ] = "clip",
) -> JobPublic:
    """Queue an evaluation: FID, KID and CLIP distance of the generated images against the
    references (the encoders are named in the result)."""
    _check_counts(settings, images, reference_latents)
    if (job is None) == (not images):
        raise problem(422, "name the generated images: give either 'job' or 'images'")
    if not reference_latents and not references:
        raise problem(422, "give reference images: 'reference_latents' and/or 'references'")
    generated, producer, model = (
        _job_images(redis, job)
        if job is not None
        else (_stored_images(storage, images), None, None)
    )
    keys = _source_images(catalog, reference_latents)
    keys += _store_references(storage, references, settings.max_image_pixels)
    evaluation = EvaluateRequest(
        generated=generated, references=keys, label=label, features=features
    )
    queued = enqueue_once(
        request,
        redis,
        settings,
        metrics,
        job_type=EVALUATE,
        model=model or settings.model,
        contract=evaluation,
        depends_on=[producer] if producer else None,
    )
    return public_job(view_job(redis, queued), request)


def _check_counts(settings, images: list[str], reference_latents: list[str]) -> None:
    """Bounded like a mix: as many generated images as one mix makes, as many references
    as one mix takes inputs."""
    if len(images) > settings.max_mixes_per_request:
        raise problem(
            422,
            f"{len(images)} images; the limit is {settings.max_mixes_per_request} "
            "(LATENTMIX_MAX_MIXES_PER_REQUEST)",
        )
    if len(reference_latents) > settings.max_latents_per_mix:
        raise problem(
            422,
            f"{len(reference_latents)} reference latents; the limit is "
            f"{settings.max_latents_per_mix} (LATENTMIX_MAX_LATENTS_PER_MIX)",
        )


@router.get("/evaluations/{job_id}", response_model=JobPublic, responses=PROBLEM_RESPONSES)
def get_evaluation(
    job_id: JobIdPath, request: Request, redis: RedisDep, storage: StorageDep
) -> JobPublic:
    """An evaluation's status and, once finished, its figures (kept in storage after the
    job's record expires)."""
    found = fetch_job(redis, job_id)
    if found is not None and job_type_of(found) is EVALUATE:
        return public_job(view_job(redis, found), request)
    try:
        stored = json.loads(storage.get(evaluation_key(job_id)))
    except NotFound:
        raise problem(404, f"evaluation {job_id} not found") from None
    return JobPublic(
        id=job_id,
        type=EVALUATE.name,
        model=stored.get("model"),
        status=JobStatus.succeeded,
        progress={"done": 1, "total": 1},
        created_at=None,
        started_at=None,
        finished_at=None,
        error=None,
        result=stored["result"],
    )


def _job_images(redis, job_id: str) -> tuple[list[str], str | None, str | None]:
    """The image ids of a mix job, the job to wait for (None once it succeeded), its model."""
    found = fetch_job(redis, job_id)
    if found is None:
        raise problem(404, f"job {job_id} not found")
    model = model_of_queue(found.origin)
    view = view_job(redis, found)
    if view.status is JobStatus.succeeded and view.result and "images" in view.result:
        return [image["id"] for image in view.result["images"]], None, model
    if view.status.is_terminal():
        raise problem(422, f"job {job_id} ended {view.status.value}: it has no images to score")
    if job_type_of(found) is not MIX:
        raise problem(
            409,
            f"{view.type} job {job_id} has not finished ({view.status.value}); only a mix "
            "job can be evaluated before it ends: ask again once it has",
        )
    planned = MixRequest.model_validate(found.args[0])
    return [row.image for row in planned.rows], found.id, model


def _stored_images(storage, image_ids: list[str]) -> list[str]:
    stored = in_parallel(lambda i: storage.exists(image_key(i)), image_ids)
    missing = [i for i, ok in zip(image_ids, stored, strict=True) if not ok]
    if missing:
        raise problem(404, f"images not found: {missing[:5]}")
    return image_ids


def _source_images(catalog: LatentCatalog, latent_ids: list[str]) -> list[str]:
    """The storage keys of the images these latents were inverted from."""
    records = in_parallel(catalog.record, latent_ids)
    keys = []
    for latent_id, record in zip(latent_ids, records, strict=True):
        if record is None:
            raise problem(404, f"latent {latent_id} not found or not ready")
        if record.source_image is None:
            raise problem(
                422,
                f"latent {latent_id} has no stored source image (source {record.source}; "
                "latents inverted before evaluations existed keep none): upload it as "
                "'references'",
            )
        keys.append(record.source_image)
    return keys


def _store_references(storage, uploads: list[UploadFile], max_pixels: int) -> list[str]:
    data = [_read_image(upload, max_pixels) for upload in uploads]  # all checked first
    keys = [upload_key(item) for item in data]
    in_parallel(lambda key, item: storage.put(key, item, "application/octet-stream"), keys, data)
    return keys
