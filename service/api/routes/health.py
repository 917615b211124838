"""GET /healthz (process alive), GET /readyz (Redis, storage and a worker with its model
loaded).

`/readyz?exclude=workers` leaves the fleet out: whether this API process can take requests.
That is the readiness probe of an API replica whose workers scale to zero on an empty queue
(deploy/kubernetes): counting workers there would take the API out of its Service until a
worker runs, and no job could be queued to start one. (kube-apiserver's `/readyz?exclude=`
is the model.)"""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from latentmix.service.api.deps import RedisDep, StorageDep
from latentmix.service.api.problems import PROBLEM_RESPONSES
from latentmix.service.core.model_cards import served_models

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        422: PROBLEM_RESPONSES[422],
        503: {"description": "a dependency is not ready"},
    },
)
def readyz(
    redis: RedisDep,
    storage: StorageDep,
    exclude: Annotated[
        list[Literal["workers"]],
        Query(description="checks to leave out: `workers` (an API replica's own readiness)"),
    ] = [],  # noqa: B006 (FastAPI copies query defaults)
) -> JSONResponse:
    """Redis and storage are reachable, and at least one live worker has its model loaded
    (a worker still loading, or one that died, does not count)."""
    checks = {"redis": _check(redis.ping), "storage": _check(storage.check)}
    models = served_models(redis) if checks["redis"] == "ok" else {}
    workers = sum(models.values())
    if "workers" not in exclude:
        checks["workers"] = "ok" if workers else "no worker with a loaded model"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "workers": workers,
            "models": models,
        },
        status_code=200 if ready else 503,
    )


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:
        return f"error: {exc}"
    return "ok"
