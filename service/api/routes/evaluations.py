"""POST /evaluations (score generated images against real ones), GET /evaluations/{id}."""

import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import StringConstraints

from latentmix.service.api.deps import CatalogDep, MetricsDep, RedisDep, SettingsDep, StorageDep
from latentmix.service.api.idempotency import enqueue_once
from latentmix.service.api.job_views import JobIdPath, public_job
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.api.schemas import JobPublic
from latentmix.service.api.uploads import read_image
from latentmix.service.core.contract import EVALUATE, EvaluationFeatures
from latentmix.service.core.evaluation_planning import EvaluationAsk, plan_evaluation
from latentmix.service.core.ids import ID_RE
from latentmix.service.core.jobs import JobStatus, fetch_job, job_type_of, view_job
from latentmix.service.core.latents import evaluation_key, upload_key
from latentmix.service.core.storage import NotFound

router = APIRouter(tags=["evaluations"])

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
ContentId = Annotated[str, StringConstraints(pattern=ID_RE.pattern)]


class EvaluationForm:
    """POST /evaluations' form fields."""

    def __init__(
        self,
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
            EvaluationFeatures,
            Form(
                description="FID/KID features: CLIP (LATENTMIX_CLIP_MODEL), Inception "
                "(LATENTMIX_INCEPTION_WEIGHTS), or judge: the model's judge (GET /models: "
                "card.augmentation.judge) for FID, KID and the distance alike; otherwise the "
                "distance uses CLIP"
            ),
        ] = "clip",
        judge: Annotated[
            bool,
            Form(
                description="instead of the figures, read each image's class with the model's "
                "judge (GET /models: card.augmentation.judge, e.g. the shapes classifier): "
                "result.judged; no references needed"
            ),
        ] = False,
    ):
        self.references = references
        self.ask = EvaluationAsk(
            job, images, reference_latents, len(references), label, features, judge
        )


@router.post("/evaluations", status_code=202, response_model=JobPublic, responses=PROBLEM_RESPONSES)
def create_evaluation(
    form: Annotated[EvaluationForm, Depends()],
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    storage: StorageDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
) -> JobPublic:
    """Queue an evaluation: FID, KID and CLIP distance of the generated images against the
    references (the encoders are named in the result), or, with judge, each image's class
    as the model's judge reads it."""
    planned = plan_evaluation(
        form.ask,
        settings,
        redis,
        storage,
        catalog,
        store_uploads=lambda: _store_references(storage, form.references, settings),
    )
    queued = enqueue_once(
        request,
        redis,
        settings,
        metrics,
        job_type=EVALUATE,
        model=planned.model,
        contract=planned.request,
        depends_on=planned.depends_on,
    )
    return public_job(view_job(redis, queued), request)


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


def _store_references(storage, uploads: list[UploadFile], settings) -> list[str]:
    data = [read_image(upload, settings.max_image_pixels) for upload in uploads]  # all checked
    keys = [upload_key(item) for item in data]
    storage.in_parallel(
        lambda key, item: storage.put(key, item, "application/octet-stream"), keys, data
    )
    return keys
