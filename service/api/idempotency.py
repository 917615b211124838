"""`Idempotency-Key` on POST: a retried request gets the original answer, not a new job.

Per (API key, Idempotency-Key) one Redis record, claimed with SET NX:

- first request: the claim is `pending` while it runs; a 2xx answer is stored with the
  request's fingerprint for `LATENTMIX_IDEMPOTENCY_TTL_S`; any other answer (a 4xx to
  fix, a 503 to retry) drops the claim, so the same key can be used again;
- the same key again with the same request: the stored answer, with
  `Idempotent-Replayed: true`; nothing runs;
- the same key with a different request (method, path, query or body): 422;
- the same key while the first is still running: 409 with Retry-After.

A crash between queueing a job and storing the answer would let a retry queue a second
job. So a route that queues one takes its job id from `stable_job_id(request)`, the same for
every retry of the same request under the same key, and answers with the job it finds
under that id instead of queueing another.

The fingerprint hashes method, path, query, media type and body. Multipart bodies are
hashed part by part (name, filename, type, bytes) so that a client re-encoding the same
form with a new random boundary still matches; JSON bodies are hashed canonically.
"""

import base64
import hashlib
import json
import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from redis import Redis
from rq.job import Job
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentmix.service.api.metrics import Metrics
from latentmix.service.api.multipart import MultipartWalker, PartListener
from latentmix.service.api.problems import (
    REDIS_ERRORS,
    RETRY_AFTER_S,
    problem_response,
    unavailable,
)
from latentmix.service.api.security import principal_of
from latentmix.service.core.config import Settings
from latentmix.service.core.contract import Contract, JobType
from latentmix.service.core.jobs import enqueue, fetch_job

HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as in UUIDs or ULIDs
RECORD_KEY = "latentmix:idempotency:{digest}"
PENDING_TTL_S = 120  # a claim outlives a crashed API process by at most this long
MAX_STORED_BODY = 1 << 20
REPLAYED_HEADER = "Idempotent-Replayed"
_STATE = "latentmix.idempotency"  # the request's (key digest, fingerprint), for routes

log = logging.getLogger("latentmix.api")

# Compare-and-set / compare-and-delete on the claim, so a late request never overwrites
# or drops a claim that is no longer its own.
_REPLACE_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return nil
"""
_DELETE_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class _Fingerprint(PartListener):
    def __init__(self, scope: Scope):
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "")
        self.media_type = content_type.split(";")[0].strip().lower()
        self._head = hashlib.sha256()
        request_line = (scope["method"], scope["path"], scope.get("query_string", b""))
        for part in (*request_line, self.media_type):
            self._head.update(part.encode() if isinstance(part, str) else part)
            self._head.update(b"\0")
        self._raw = hashlib.sha256()
        self._parts = hashlib.sha256()
        self._json = bytearray() if self.media_type == "application/json" else None
        self._walker = MultipartWalker(content_type, self)
        self.complete = False

    def feed(self, chunk: bytes, more: bool) -> None:
        self._raw.update(chunk)
        self._walker.feed(chunk)
        if self._json is not None:
            self._json += chunk
        self.complete = not more

    def part_started(self, name: str, filename: str | None, content_type: str) -> None:
        meta = json.dumps([name, filename, content_type.lower()]).encode()
        self._parts.update(b"\0part\0" + meta + b"\0")

    def part_data(self, data: memoryview) -> None:
        self._parts.update(data)

    def hexdigest(self) -> str:
        digest = self._head.copy()
        if self._walker.active:
            digest.update(b"multipart\0" + self._parts.digest())
        elif self._json is not None and (canonical := _canonical_json(bytes(self._json))):
            digest.update(b"json\0" + canonical)
        else:
            digest.update(b"raw\0" + self._raw.digest())
        return digest.hexdigest()


def _canonical_json(body: bytes) -> bytes | None:
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        return None


def stable_job_id(request: Request) -> str | None:
    """A job id shared by every retry of this request under its Idempotency-Key (None
    without a key). Call it after the body is read (FastAPI reads it before the route)."""
    digest, fingerprint = request.scope.get("state", {}).get(_STATE, (None, None))
    if digest is None or not fingerprint.complete:
        return None
    return hashlib.sha256(f"{digest}\n{fingerprint.hexdigest()}".encode()).hexdigest()[:32]


def enqueue_once(
    request: Request,
    redis: Redis,
    settings: Settings,
    metrics: Metrics,
    *,
    job_type: JobType,
    model: str,
    contract: Contract,
    depends_on: list[str] | None = None,
    webhook: str | None = None,
) -> Job:
    """Queue `contract` as a `job_type` job, unless a retry of this request (same
    Idempotency-Key and body) queued it already and lost the answer: then that job."""
    job_id = stable_job_id(request) or uuid.uuid4().hex
    job = fetch_job(redis, job_id)
    if job is None:
        job = enqueue(
            redis,
            settings,
            job_type=job_type,
            model=model,
            request=contract,
            job_id=job_id,
            depends_on=depends_on,
            webhook=webhook,
        )
        metrics.jobs_submitted.labels(job_type.name).inc()
    return job


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, ttl_s: int):
        self.app = app
        self.ttl_s = ttl_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = Headers(scope=scope).get(HEADER) if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not KEY_RE.fullmatch(key):
            await _invalid_key(scope, receive, send)
            return
        redis: Redis = scope["app"].state.redis
        digest = hashlib.sha256(f"{principal_of(scope)}\n{key}".encode()).hexdigest()
        record_key = RECORD_KEY.format(digest=digest)
        claim = json.dumps({"state": "pending", "claim": uuid.uuid4().hex})
        try:
            claimed = await run_in_threadpool(
                redis.set, record_key, claim, nx=True, ex=PENDING_TTL_S
            )
            stored = None if claimed else await run_in_threadpool(redis.get, record_key)
        except REDIS_ERRORS as exc:
            await unavailable("job queue", exc)(scope, receive, send)
            return
        fingerprint = _Fingerprint(scope)
        scope.setdefault("state", {})[_STATE] = (digest, fingerprint)
        if claimed:
            await self._first(scope, receive, send, redis, record_key, claim, fingerprint)
        else:
            await _again(scope, receive, send, key, stored, fingerprint)

    async def _first(self, scope, receive, send, redis, record_key, claim, fingerprint):
        """Run the request once, fingerprinting its body and keeping a 2xx answer."""
        status = 0
        content_type = None
        body = bytearray()

        async def fingerprinting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                fingerprint.feed(message.get("body", b""), message.get("more_body", False))
            return message

        async def capturing_send(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = Headers(raw=message.get("headers", [])).get("content-type")
            elif message["type"] == "http.response.body" and len(body) <= MAX_STORED_BODY:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, fingerprinting_receive, capturing_send)
        except BaseException:
            await _quietly(redis.eval, _DELETE_IF, 1, record_key, claim)
            raise
        if 200 <= status < 300 and fingerprint.complete and len(body) <= MAX_STORED_BODY:
            record = {
                "state": "done",
                "fingerprint": fingerprint.hexdigest(),
                "status": status,
                "content_type": content_type,
                "body": base64.b64encode(bytes(body)).decode(),
            }
            await _quietly(
                redis.eval, _REPLACE_IF, 1, record_key, claim, json.dumps(record), self.ttl_s
            )
        else:
            await _quietly(redis.eval, _DELETE_IF, 1, record_key, claim)


async def _again(scope, receive, send, key: str, stored: bytes | None, fingerprint) -> None:
    """A key seen before: replay its answer if the request is the same one."""
    record = json.loads(stored) if stored is not None else {"state": "pending"}
    if record["state"] != "done":
        response = problem_response(
            409,
            f"a request with {HEADER} {key!r} is still in progress; retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
        await response(scope, receive, send)
        return
    while not fingerprint.complete:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        fingerprint.feed(message.get("body", b""), message.get("more_body", False))
    if fingerprint.hexdigest() != record["fingerprint"]:
        response = problem_response(
            422,
            f"{HEADER} {key!r} was already used for a different request; "
            "use a new key for a new request",
            errors=[{"field": f"header.{HEADER}", "message": "reused with a different request"}],
        )
    else:
        response = Response(
            base64.b64decode(record["body"]),
            status_code=record["status"],
            headers={REPLAYED_HEADER: "true"},
            media_type=record["content_type"],
        )
    await response(scope, receive, send)


async def _invalid_key(scope, receive, send) -> None:
    message = "must be 1 to 255 visible ASCII characters (a UUID, for example)"
    response = problem_response(
        422,
        f"{HEADER}: {message}",
        errors=[{"field": f"header.{HEADER}", "message": message}],
    )
    await response(scope, receive, send)


async def _quietly(call, *args) -> None:
    """Bookkeeping after the answer is sent: a Redis error here only loses the replay."""
    try:
        await run_in_threadpool(call, *args)
    except REDIS_ERRORS as exc:
        log.warning("idempotency record not updated: %s", exc)


def document(app: FastAPI) -> None:
    """Declare the optional header on every POST operation of the OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            parameter = {
                "name": HEADER,
                "in": "header",
                "required": False,
                "description": "Retrying with the same key returns the original answer; "
                "reusing it for a different request is rejected (422).",
                "schema": {"type": "string", "pattern": KEY_RE.pattern},
            }
            for operations in schema.get("paths", {}).values():
                if "post" in operations:
                    operations["post"].setdefault("parameters", []).append(parameter)
        return app.openapi_schema

    app.openapi = openapi
