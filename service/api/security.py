"""API keys and CORS.

With `LATENTMIX_API_KEYS` set, every request but the health probes, the landing page `/`
and the Studio page's files (`/studio`, no data in them) needs
`Authorization: Bearer <key>`; keys are compared in constant time (digests of equal
length, every configured key checked). Unset, the API is open. A pure ASGI middleware does
the check, so it covers every path (docs, schema and 404s included) and runs before any
body is read. The OpenAPI schema declares the bearer scheme through a dependency that
only documents it: required when keys are configured, optional (`security: [{apiKey: []},
{}]`) when they are not, so the schema is true of the server that serves it.

CORS is off unless `LATENTMIX_CORS_ORIGINS` lists origins.
"""

import hashlib
import hmac

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPBearer
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from latentmix.service.api.problems import problem_response

# The landing page and the Studio page with its assets hold no data; the page asks for a key
# and sends it with every API call.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/studio"})
PUBLIC_PREFIXES = ("/studio/",)
PRINCIPAL_SCOPE_KEY = "latentmix.principal"
ANONYMOUS = "anonymous"

# Documents the scheme in OpenAPI; enforcement is ApiKeyMiddleware's.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key as a bearer token; required when the server has keys configured.",
)
API_KEY_DEPENDENCIES = [Depends(bearer_scheme)]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def principal_of(scope: Scope) -> str:
    """Who made the request: a fingerprint of its API key, or `anonymous`."""
    return scope.get(PRINCIPAL_SCOPE_KEY, ANONYMOUS)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[SecretStr]):
        self.app = app
        self.digests = [_digest(key.get_secret_value()) for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(Headers(scope=scope).get("authorization"))
        if token is None:
            await _unauthorized("missing API key: send 'Authorization: Bearer <key>'")(
                scope, receive, send
            )
            return
        digest = _digest(token)
        matched = False
        for known in self.digests:  # no early exit: the time does not depend on which key
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            await _unauthorized("invalid API key", error="invalid_token")(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = digest.hex()[:32]
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(detail: str, error: str | None = None):
    challenge = 'Bearer realm="latentmix"' + (f', error="{error}"' if error else "")
    return problem_response(401, detail, headers={"WWW-Authenticate": challenge})


def install(app: FastAPI, keys: list[SecretStr], cors_origins: list[str]) -> None:
    """Add the API key check, then CORS outside it (preflights carry no credentials)."""
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    else:
        _document_optional_keys(app)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "Location", "Idempotent-Replayed"],
        )


def _document_optional_keys(app: FastAPI) -> None:
    """Without keys a bearer token is accepted and ignored: the schema says auth is optional."""
    build = app.openapi
    required = [{bearer_scheme.scheme_name: []}]

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if operation.get("security") == required:
                        operation["security"] = [*required, {}]
        return app.openapi_schema

    app.openapi = openapi
