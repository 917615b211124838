"""The inputs of a mix or a morph, as the API knows them when it plans the job: their model,
prompts and inversion steps, how each was inverted, and the jobs still producing some of
them (read from the latents' records, or from the requests of the jobs producing them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis import Redis

from latentmix.service.core.contract import DEFAULT_INVERSION, INVERT, MIX
from latentmix.service.core.errors import Invalid, Missing
from latentmix.service.core.inversion_mixing import (
    InversionOrigin,
    origin_of_record,
    shared_origin,
)
from latentmix.service.core.jobs import fetch_job, job_request, job_type_of, model_of_queue
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.model_cards import check_same_model, model_card


@dataclass
class Inputs:
    """What the API knows of a mix's inputs: their model, prompts and inversion steps, how
    each was inverted, and the jobs still producing some of them."""

    model: str | None = None
    prompts: list[str | None] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    producers: dict[str, str] = field(default_factory=dict)
    # latent id -> (inversion method or None for the default, its settings)
    inversions: dict[str, tuple[str | None, dict]] = field(default_factory=dict)


def default_method(model: str, redis: Redis) -> str:
    """The model's default inversion method (its card's first); Stable Diffusion's before
    any worker has published the card."""
    card = model_card(redis, model)
    return card.inversion_methods[0] if card else DEFAULT_INVERSION


def inversion_origin(inputs: Inputs, model: str, redis: Redis) -> InversionOrigin:
    """The inputs' one inversion origin; Invalid naming two that differ."""
    default = default_method(model, redis)
    origins = {
        latent_id: origin_of_record(inversion, recorded, default)
        for latent_id, (inversion, recorded) in inputs.inversions.items()
    }
    try:
        return shared_origin(origins)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def resolve_inputs(catalog: LatentCatalog, redis: Redis, latent_ids: list[str]) -> Inputs:
    """Check every input exists (ready or pending) and shares one model and shape; read
    each one's prompt and steps from its record, or from the request of its pending job."""
    inputs, models, shapes = Inputs(), set(), set()
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
            raise Missing(f"latent {latent_id} not found")
        models.add(job.model)
        inputs.producers[latent_id] = job.id
        inputs.prompts.append(job.prompts.get(latent_id))
        inputs.steps.append(job.steps)
        inputs.inversions[latent_id] = (job.inversion, job.inversion_settings)
    check_same_model(models, redis)
    if len(shapes) > 1:
        raise Invalid(f"latents of different shapes cannot be mixed: {sorted(shapes)}")
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
    def fetch(cls, redis: Redis, job_id: str) -> _PendingJob | None:
        job = fetch_job(redis, job_id)
        if job is None:
            return None
        model = model_of_queue(job.origin)
        if job_type_of(job) is MIX:
            mix = job_request(job)
            return cls(job.id, model, {}, None, mix.inversion, mix.inversion_settings)
        if job_type_of(job) is not INVERT:
            return cls(job.id, model, {}, None)
        inversion = job_request(job)
        prompts = {item.latent_id: item.prompt for item in inversion.items}
        settings = inversion.settings
        recorded = {"steps": settings.steps, "method": settings.method, **settings.options()}
        return cls(job.id, model, prompts, settings.steps, settings.method, recorded)
