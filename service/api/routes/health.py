"""GET /healthz (process alive), GET /readyz (Redis, storage and a worker reachable)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from rq import Worker

from latentmix.service.api.deps import RedisDep, StorageDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
def readyz(redis: RedisDep, storage: StorageDep) -> JSONResponse:
    """Redis, storage and at least one worker are reachable."""
    checks = {"redis": _check(redis.ping), "storage": _check(storage.check)}
    workers = Worker.count(connection=redis) if checks["redis"] == "ok" else 0
    checks["workers"] = "ok" if workers else "no worker registered"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks, "workers": workers},
        status_code=200 if ready else 503,
    )


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:
        return f"error: {exc}"
    return "ok"
