"""POST /latents planned: the images to invert (content-addressed ids, each claimed for this
request's job unless stored or pending on another), the uploaded latents checked against the
model's card and stored, and the inversion job queued over the images it claimed. Raises the
domain errors of `errors.py`; the route only parses, calls and answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from redis import Redis
from rq.job import Job

from latentmix.service.core.config import Settings
from latentmix.service.core.contract import (
    INVERT,
    MAX_PROMPT_CHARS,
    InversionSettings,
    InvertItem,
    InvertRequest,
    ReconstructionMeasure,
)
from latentmix.service.core.errors import Invalid
from latentmix.service.core.ids import image_latent_id, uploaded_latent_id
from latentmix.service.core.jobs import enqueue
from latentmix.service.core.latents import (
    InvalidLatent,
    LatentCatalog,
    LatentRecord,
    decode_latent,
    upload_key,
)
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.storage import Storage

MIN_SIZE, MAX_SIZE = 64, 2048  # image sides in pixels; uploaded latents likewise


@dataclass(frozen=True)
class PlannedLatent:
    """One latent of the answer: ready (stored) or pending on a job (this one or another)."""

    id: str
    status: Literal["ready", "pending"]
    cached: bool  # known before this request
    job: str | None
    filename: str | None
    source: Literal["image", "upload"]


@dataclass(frozen=True)
class ClaimedImage:
    """An image this request's job inverts."""

    latent_id: str
    prompt: str
    data: bytes


@dataclass
class InversionPlan:
    """The request's latents, and the images its own job inverts (those it claimed)."""

    model: str
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    latents: list[PlannedLatent] = field(default_factory=list)
    claimed: list[ClaimedImage] = field(default_factory=list)


def prompts_for(prompts: list[str], image_count: int) -> list[str]:
    """One prompt per image: none or one for all, or one each."""
    for index, prompt in enumerate(prompts):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise Invalid(
                f"prompt {index} has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}"
            )
    if len(prompts) <= 1:
        return (prompts or [""]) * image_count
    if len(prompts) != image_count:
        raise Invalid(
            f"got {len(prompts)} prompts for {image_count} images: send one, or one per image"
        )
    return prompts


def check_size(size: int | None, card: ModelCard | None) -> None:
    if size is not None and card is not None and size % card.pixel_multiple:
        raise Invalid(
            f"size {size} is not a multiple of {card.pixel_multiple} pixels, the size multiple "
            f"of model {card.model!r} ({card.family})"
        )


def read_latent(data: bytes, filename: str | None, card: ModelCard | None) -> np.ndarray:
    """A latent file as `decode_latent` checks it, with the model's channels and a spatial
    size the model accepts (images of MIN_SIZE to MAX_SIZE pixels, sides a multiple of the
    model's size multiple)."""
    channels = card.latent_channels if card else None
    try:
        array = decode_latent(data, channels)
    except InvalidLatent as exc:
        model = f" for model {card.model!r}" if card else ""
        raise Invalid(f"{filename!r}: {exc}{model}") from None
    scale = card.vae_scale_factor if card else 8
    cells = card.pixel_multiple // scale if card else 1  # SD 3: the transformer's patch
    smallest, largest = MIN_SIZE // scale, MAX_SIZE // scale
    height, width = array.shape[1:]
    if not (smallest <= height <= largest and smallest <= width <= largest):
        raise Invalid(
            f"{filename!r}: latent is {height}x{width}; each side must be in "
            f"[{smallest}, {largest}] (images of {MIN_SIZE} to {MAX_SIZE} pixels)"
        )
    if height % cells or width % cells:
        raise Invalid(
            f"{filename!r}: latent is {height}x{width}; each side must be a multiple "
            f"of {cells} for model {card.model!r} (its transformer's patch size)"
        )
    return array


def plan_latents(
    catalog: LatentCatalog,
    plan: InversionPlan,
    inversion: InversionSettings,
    images: Sequence[tuple[str | None, bytes, str]],
    latents: Sequence[tuple[str | None, np.ndarray]],
    claim_ttl: int,
) -> InversionPlan:
    """Each image (filename, bytes, prompt): stored, pending on another job, or claimed for
    `plan`'s job; then each uploaded latent (filename, array) stored."""
    ids = [
        image_latent_id(data, plan.model, inversion.id_fields() | {"prompt": prompt})
        for _, data, prompt in images
    ]
    # A new image's lookup misses Redis and asks storage: those round trips side by side.
    stored = catalog.storage.in_parallel(lambda i: catalog.record(i) is not None, ids)
    for (filename, data, prompt), latent_id, is_stored in zip(images, ids, stored, strict=True):
        _plan_image(catalog, plan, latent_id, is_stored, claim_ttl, filename, data, prompt)
    plan.latents += [_store_latent(catalog, plan.model, name, array) for name, array in latents]
    return plan


def _plan_image(catalog, plan, latent_id, is_stored, claim_ttl, filename, data, prompt) -> None:
    """Cached, pending on another job, or claimed for the plan's job."""
    if is_stored:
        plan.latents.append(PlannedLatent(latent_id, "ready", True, None, filename, "image"))
        return
    claimed = {image.latent_id for image in plan.claimed}
    if latent_id in claimed:
        holder = plan.job_id  # the same image twice in one request
    else:
        holder = catalog.claim(latent_id, plan.job_id, claim_ttl) or plan.job_id
    if holder == plan.job_id and latent_id not in claimed:
        plan.claimed.append(ClaimedImage(latent_id, prompt, data))
    cached = holder != plan.job_id
    plan.latents.append(PlannedLatent(latent_id, "pending", cached, holder, filename, "image"))


def _store_latent(
    catalog: LatentCatalog, model: str, filename: str | None, array: np.ndarray
) -> PlannedLatent:
    latent_id = uploaded_latent_id(array, model)
    known = catalog.record(latent_id) is not None
    if not known:
        catalog.publish(
            LatentRecord.describe(latent_id, array, model=model, source="upload"), array
        )
    return PlannedLatent(latent_id, "ready", known, None, filename, "upload")


def enqueue_inversion(
    redis: Redis,
    settings: Settings,
    storage: Storage,
    catalog: LatentCatalog,
    plan: InversionPlan,
    inversion: InversionSettings,
    measure: ReconstructionMeasure,
    webhook: str | None,
) -> Job:
    """Store the claimed images (side by side) and queue their inversion; the claims are
    released if either fails, so a retry can claim them again."""
    try:
        data = [image.data for image in plan.claimed]
        keys = [upload_key(item) for item in data]
        storage.in_parallel(
            lambda key, item: storage.put(key, item, "application/octet-stream"), keys, data
        )
        items = [
            InvertItem(latent_id=image.latent_id, upload_key=key, prompt=image.prompt)
            for image, key in zip(plan.claimed, keys, strict=True)
        ]
        request = InvertRequest(items=items, settings=inversion, measure_reconstruction=measure)
        return enqueue(
            redis,
            settings,
            job_type=INVERT,
            model=plan.model,
            request=request,
            job_id=plan.job_id,
            webhook=webhook,
        )
    except Exception:
        catalog.release([image.latent_id for image in plan.claimed], plan.job_id)
        raise
