"""The FastAPI application. Torch-free: it only talks to Redis and storage."""

import asyncio
import logging
import warnings
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from PIL import Image

from latentmix.service.api import docs, metrics, problems, security, studio
from latentmix.service.api.idempotency import IdempotencyMiddleware
from latentmix.service.api.idempotency import document as document_idempotency
from latentmix.service.api.limits import BodyLimitMiddleware, RequestLimits
from latentmix.service.api.metrics import Metrics
from latentmix.service.api.reaper import run_reaper
from latentmix.service.api.routes import animations as animations_route
from latentmix.service.api.routes import (
    evaluations,
    health,
    images,
    jobs,
    latents,
    limits,
    mix,
    models,
)
from latentmix.service.api.routes import metrics as metrics_route
from latentmix.service.api.routes import morph as morph_route
from latentmix.service.core.config import Settings, get_settings
from latentmix.service.core.job_events import JobEvents
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.redis_connection import connect, connect_async
from latentmix.service.core.storage import storage_from_settings

SHUTDOWN_TIMEOUT_S = 5.0
log = logging.getLogger("latentmix.api")


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids, so the committed openapi/ schema changes only with the API."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.redis = connect(settings, socket_timeout=5, socket_connect_timeout=2)
        app.state.storage = storage_from_settings(settings)
        app.state.catalog = LatentCatalog(app.state.storage, app.state.redis)
        app.state.metrics = Metrics(app.state.redis)
        app.state.job_events = JobEvents(lambda: connect_async(settings))
        background = [
            asyncio.create_task(run_reaper(app.state.redis, settings)),
            asyncio.create_task(app.state.job_events.run()),
        ]
        yield
        for task in background:
            task.cancel()
        # Bounded: a subscription stuck closing its connection must not hold the shutdown.
        _, stuck = await asyncio.wait(background, timeout=SHUTDOWN_TIMEOUT_S)
        for task in stuck:
            log.warning("shutdown: %s did not stop within %s s", task, SHUTDOWN_TIMEOUT_S)
        app.state.redis.close()
        app.state.storage.io.shutdown(wait=False)

    app = FastAPI(
        title="LatentMix",
        version="0.1.0",
        summary="Invert images into diffusion noise latents, mix them without degeneracies, "
        "generate images.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # docs.install serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    docs.install(app)
    studio.install(app)
    problems.install(app)
    metrics.install(app)
    for module in (latents, mix, jobs, images, models, limits, metrics_route, evaluations):
        app.include_router(module.router, dependencies=security.API_KEY_DEPENDENCIES)
    for module in (morph_route, animations_route):
        app.include_router(module.router, dependencies=security.API_KEY_DEPENDENCIES)
    app.include_router(health.router)
    # Outermost last: CORS, API keys, body limits, then idempotency next to the routes.
    app.add_middleware(IdempotencyMiddleware, ttl_s=settings.idempotency_ttl_s)
    app.add_middleware(
        BodyLimitMiddleware,
        limits=RequestLimits(
            max_request_bytes=settings.max_request_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            max_files=settings.max_files,
        ),
    )
    security.install(app, settings.api_keys, settings.cors_origins)
    document_idempotency(app)
    # Pillow's decompression-bomb warning becomes an error that uploads turn into a 413.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    return app
