"""Errors as RFC 9457 problem details (`application/problem+json`), one format everywhere.

Route handlers raise `problem(status, detail)`, the planning modules of service/core their
domain errors (`Refused`; each kind's status is in `REFUSAL_STATUS`). The handlers
installed here render those, request validation errors (naming each offending field), an
unreachable Redis or object store (503 with Retry-After) and anything unexpected (500,
without internals). Pure ASGI
middleware, which runs outside these handlers, answers with `problem_response` directly.
"""

import logging
from http import HTTPStatus
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentmix.service.core.errors import Invalid, Missing, NotReady, Refused
from latentmix.service.core.jobs import REDIS_ERRORS
from latentmix.service.core.storage import StorageUnavailable

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5
STORAGE_ERRORS = (BotoCoreError, ClientError, StorageUnavailable)

log = logging.getLogger("latentmix.api")


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


def problem_response(
    status: int,
    detail: str | None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """A problem+json response; also an ASGI app, so middleware can send it as is."""
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def unavailable(what: str, exc: Exception) -> JSONResponse:
    """503 for a dependency that is down; clients retry after `Retry-After` seconds.

    The detail names the dependency and the error class, not addresses: those are logged."""
    log.warning("%s unavailable: %s", what, exc)
    return problem_response(
        503,
        f"{what} unavailable ({type(exc).__name__}); retry later",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)


# The planning modules' domain errors (service/core/errors.py) and the status each answers.
REFUSAL_STATUS: dict[type[Refused], int] = {Invalid: 422, Missing: 404, NotReady: 409}


async def _refused(_: Request, exc: Refused) -> JSONResponse:
    return problem_response(REFUSAL_STATUS[type(exc)], str(exc))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": ".".join(str(part) for part in e["loc"]), "message": _message(e)}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(422, detail, errors=errors)


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, without the `Value error, ` it puts before a validator's own."""
    message = error["msg"]
    if error.get("type") == "value_error":
        message = message.removeprefix("Value error, ")
    return message


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return unavailable("job queue", exc)


async def _storage_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return unavailable("storage", exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Refused, _refused)
    for error in REDIS_ERRORS:
        app.add_exception_handler(error, _redis_unavailable)
    for error in STORAGE_ERRORS:
        app.add_exception_handler(error, _storage_unavailable)
    app.add_exception_handler(Exception, _unexpected)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}}
    for code in (400, 401, 404, 409, 413, 415, 422, 503)
}
