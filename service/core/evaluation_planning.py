"""An evaluation job planned from what a client asked: the generated images (a mix job's,
waited for if unfinished, or stored image ids) and the references (the source images of
latents, and uploads), every check made before queueing. Raises the domain errors of
`errors.py`; the route only parses, calls, enqueues and answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from latentmix.service.core.config import Settings
from latentmix.service.core.contract import MIX, EvaluateRequest
from latentmix.service.core.errors import Invalid, Missing, NotReady
from latentmix.service.core.jobs import (
    JobStatus,
    fetch_job,
    job_request,
    job_type_of,
    model_of_queue,
    view_job,
)
from latentmix.service.core.latents import LatentCatalog, image_key
from latentmix.service.core.mix_planning import PlannedJob
from latentmix.service.core.model_cards import model_card
from latentmix.service.core.storage import Storage


@dataclass(frozen=True)
class EvaluationAsk:
    """What POST /evaluations asks; `uploads` counts the reference images uploaded."""

    job: str | None
    images: list[str]
    reference_latents: list[str]
    uploads: int
    label: str | None
    features: str
    judge: bool = False  # the model's judge reads each image's class; no references


def plan_evaluation(
    ask: EvaluationAsk,
    settings: Settings,
    redis: Redis,
    storage: Storage,
    catalog: LatentCatalog,
    store_uploads: Callable[[], list[str]],
) -> PlannedJob:
    """The evaluation job `ask` describes; `store_uploads()` stores the uploaded references
    (once everything else is checked) and returns their storage keys."""
    _check_counts(settings, ask.images, ask.reference_latents)
    if (ask.job is None) == (not ask.images):
        raise Invalid("name the generated images: give either 'job' or 'images'")
    if not ask.judge and not ask.reference_latents and not ask.uploads:
        raise Invalid("give reference images: 'reference_latents' and/or 'references'")
    generated, producer, model = (
        _job_images(redis, ask.job)
        if ask.job is not None
        else (_stored_images(storage, ask.images), None, None)
    )
    if ask.judge:
        _check_judge(redis, model or settings.model, "judge is false")
    if ask.features == "judge":
        _check_judge(redis, model or settings.model, "features is clip or inception")
    references = _source_images(catalog, ask.reference_latents) + store_uploads()
    evaluation = EvaluateRequest(
        generated=generated,
        references=references,
        label=ask.label,
        features=ask.features,
        judge=ask.judge,
    )
    return PlannedJob(model or settings.model, evaluation, [producer] if producer else None)


def _check_judge(redis: Redis, model: str, instead: str) -> None:
    """Invalid, saying what to ask `instead`, unless the model's card names a judge (a card
    not yet published: the worker checks)."""
    card = model_card(redis, model)
    if card is not None and (card.augmentation is None or card.augmentation.judge is None):
        raise Invalid(f"model {model!r} has no judge (its card names none): {instead}")


def _check_counts(settings: Settings, images: list[str], reference_latents: list[str]) -> None:
    """Bounded like a mix: as many generated images as one mix makes, as many references
    as one mix takes inputs."""
    if len(images) > settings.max_mixes_per_request:
        raise Invalid(
            f"{len(images)} images; the limit is {settings.max_mixes_per_request} "
            "(LATENTMIX_MAX_MIXES_PER_REQUEST)"
        )
    if len(reference_latents) > settings.max_latents_per_mix:
        raise Invalid(
            f"{len(reference_latents)} reference latents; the limit is "
            f"{settings.max_latents_per_mix} (LATENTMIX_MAX_LATENTS_PER_MIX)"
        )


def _job_images(redis: Redis, job_id: str) -> tuple[list[str], str | None, str | None]:
    """The image ids of a mix job, the job to wait for (None once it succeeded), its model."""
    found = fetch_job(redis, job_id)
    if found is None:
        raise Missing(f"job {job_id} not found")
    model = model_of_queue(found.origin)
    view = view_job(redis, found)
    if view.status is JobStatus.succeeded and view.result and "images" in view.result:
        return [image["id"] for image in view.result["images"]], None, model
    if view.status.is_terminal():
        raise Invalid(f"job {job_id} ended {view.status.value}: it has no images to score")
    if job_type_of(found) is not MIX:
        raise NotReady(
            f"{view.type} job {job_id} has not finished ({view.status.value}); only a mix "
            "job can be evaluated before it ends: ask again once it has"
        )
    return [row.image for row in job_request(found).rows], found.id, model


def _stored_images(storage: Storage, image_ids: list[str]) -> list[str]:
    stored = storage.in_parallel(lambda i: storage.exists(image_key(i)), image_ids)
    missing = [i for i, ok in zip(image_ids, stored, strict=True) if not ok]
    if missing:
        raise Missing(f"images not found: {missing[:5]}")
    return image_ids


def _source_images(catalog: LatentCatalog, latent_ids: list[str]) -> list[str]:
    """The storage keys of the images these latents were inverted from."""
    records = catalog.storage.in_parallel(catalog.record, latent_ids)
    keys = []
    for latent_id, record in zip(latent_ids, records, strict=True):
        if record is None:
            raise Missing(f"latent {latent_id} not found or not ready")
        if record.source_image is None:
            raise Invalid(
                f"latent {latent_id} has no stored source image (source {record.source}; "
                "latents inverted before evaluations existed keep none): upload it as "
                "'references'"
            )
        keys.append(record.source_image)
    return keys
