"""The worker process: load the model once, then serve its queue with RQ's SimpleWorker.

SimpleWorker runs jobs in this process: the pipeline stays warm across jobs and nothing
forks after torch (or CUDA) is up. RQ handles SIGTERM as a warm shutdown: the current
job finishes, then the worker exits.
"""

import logging
from dataclasses import dataclass

from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service.config import Settings
from service.jobs import get_queue
from service.latents import LatentCatalog
from service.storage import Storage, storage_from_settings
from worker.engine.models import LoadedModel, load_model

log = logging.getLogger("latentmix.worker")


@dataclass
class WorkerContext:
    """What every task needs, created once per process."""

    settings: Settings
    model: LoadedModel
    storage: Storage
    redis: Redis
    catalog: LatentCatalog


_context: WorkerContext | None = None


def context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("worker context not started: run tasks through `python -m worker`")
    return _context


def start(settings: Settings) -> WorkerContext:
    """Load the model and connect to Redis and storage (once per process)."""
    global _context
    log.info("loading model %s", settings.model)
    model = load_model(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        cache_dir=settings.data_dir / "models",
        max_batch_size=settings.max_batch_size,
    )
    redis = Redis.from_url(settings.effective_redis_url)
    storage = storage_from_settings(settings)
    _context = WorkerContext(settings, model, storage, redis, LatentCatalog(storage, redis))
    log.info("model %s ready on %s (%s)", settings.model, model.device, model.dtype)
    return _context


def run(settings: Settings, *, burst: bool = False) -> None:
    ctx = start(settings)
    worker = SimpleWorker(
        [get_queue(ctx.redis, settings.model)], connection=ctx.redis, serializer=JSONSerializer
    )
    worker.work(burst=burst, logging_level="INFO")
