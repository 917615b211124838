"""Errors as RFC 9457 problem details (`application/problem+json`), one format everywhere."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An HTTPException rendered as problem+json; `detail` names what is wrong."""
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _response(status: int, detail: str | None, headers=None, errors=None) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return _response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return _response(422, detail, errors=errors)


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return _response(
        503, f"job queue unavailable: {exc}", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisConnectionError, _redis_unavailable)
    app.add_exception_handler(RedisTimeoutError, _redis_unavailable)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}}
    for code in (404, 409, 413, 415, 422, 503)
}
