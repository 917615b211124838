"""Request size limits, enforced while the body streams in (chunked uploads included).

A pure ASGI middleware counts the body's bytes as the application reads them and, for
multipart forms, each file part's bytes and the number of file parts. The first byte past
a limit ends the request with 413 problem+json: nothing more is read, buffered or spooled
to disk. A declared `Content-Length` over the request limit is refused before any byte is
read.
"""

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentmix.service.api.multipart import MultipartWalker, PartListener
from latentmix.service.api.problems import problem_response


@dataclass(frozen=True)
class RequestLimits:
    max_request_bytes: int
    max_upload_bytes: int
    max_files: int


class ContentTooLarge(Exception):
    """A limit was passed; `detail` says which."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


class _PartMeter(PartListener):
    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self.files = 0
        self.part: str | None = None  # the current file part, None for plain fields
        self.part_bytes = 0

    def part_started(self, name: str, filename: str | None, content_type: str) -> None:
        self.part_bytes = 0
        self.part = None
        if filename is None:
            return
        self.files += 1
        if self.files > self.limits.max_files:
            raise ContentTooLarge(
                f"too many files: at most {self.limits.max_files} file parts per request"
            )
        self.part = f"{filename!r} (part {name!r})"

    def part_data(self, data: memoryview) -> None:
        if self.part is None:
            return
        self.part_bytes += len(data)
        if self.part_bytes > self.limits.max_upload_bytes:
            raise ContentTooLarge(
                f"file {self.part} is larger than the "
                f"{format_bytes(self.limits.max_upload_bytes)} limit per file"
            )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: RequestLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_limit = self.limits.max_request_bytes
        too_large = (
            f"request body is larger than the {format_bytes(request_limit)} limit per request"
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > request_limit:
            await problem_response(413, too_large)(scope, receive, send)
            return

        walker = MultipartWalker(headers.get("content-type"), _PartMeter(self.limits))
        received = 0
        app_responded = False
        limit_responded = False

        async def metered_receive() -> Message:
            nonlocal received, limit_responded
            if limit_responded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                try:
                    if received > request_limit:
                        raise ContentTooLarge(too_large)
                    walker.feed(chunk)
                except ContentTooLarge as exc:
                    if app_responded:
                        raise
                    # Answer now, from here: whatever sits between us and the form parser
                    # (exception groups, error handlers) cannot turn this into another
                    # status. The app is told the client left and its answer is dropped.
                    limit_responded = True
                    await problem_response(413, exc.detail)(scope, _nothing_to_receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_responded
            if limit_responded:
                return
            app_responded = app_responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, metered_receive, guarded_send)
        except Exception:
            if not limit_responded:
                raise  # after our 413, the app failing to read its body is expected


async def _nothing_to_receive() -> Message:
    return {"type": "http.disconnect"}
