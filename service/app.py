"""The FastAPI application. Torch-free: it only talks to Redis and storage."""

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis import Redis

from service.api import problems
from service.api.routes import health, images, jobs, latents, mix
from service.config import Settings, get_settings
from service.latents import LatentCatalog
from service.storage import storage_from_settings


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids, so the committed openapi/ schema changes only with the API."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.redis = Redis.from_url(
            settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        app.state.storage = storage_from_settings(settings)
        app.state.catalog = LatentCatalog(app.state.storage, app.state.redis)
        yield
        app.state.redis.close()

    app = FastAPI(
        title="LatentMix",
        version="0.1.0",
        summary="Invert images into diffusion noise latents, mix them without degeneracies, "
        "generate images.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    problems.install(app)
    for module in (latents, mix, jobs, images, health):
        app.include_router(module.router)
    return app
