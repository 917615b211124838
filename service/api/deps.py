"""Request dependencies as typed aliases; the objects live on app.state (see service.api.app)."""

from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from latentmix.service.api.metrics import Metrics
from latentmix.service.core.config import Settings
from latentmix.service.core.job_events import JobEvents
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.storage import Storage


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_catalog(request: Request) -> LatentCatalog:
    return request.app.state.catalog


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_job_events(request: Request) -> JobEvents:
    return request.app.state.job_events


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CatalogDep = Annotated[LatentCatalog, Depends(get_catalog)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobEventsDep = Annotated[JobEvents, Depends(get_job_events)]
