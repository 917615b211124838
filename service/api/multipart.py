"""A multipart/form-data body seen part by part as it streams in, for middleware.

The form itself is parsed by Starlette once the endpoint runs; this walker only watches
the same bytes go by so that limits can be enforced before a part has been buffered
(`limits.py`) and so that a request can be fingerprinted independently of its random
boundary (`idempotency.py`). Malformed bodies are not its business: it stops watching
and leaves the error to the form parser.
"""

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class PartListener:
    """Receives the parts of a multipart body; subclasses override what they need."""

    def part_started(self, name: str, filename: str | None, content_type: str) -> None:
        """A part's headers are complete."""

    def part_data(self, data: memoryview) -> None:
        """The next bytes of the current part."""


class MultipartWalker:
    """Feeds body chunks through python-multipart and reports parts to a listener.

    Exceptions raised by the listener propagate out of `feed`; parse errors only stop
    the walk (`broken` becomes True)."""

    def __init__(self, content_type: str | None, listener: PartListener):
        self.listener = listener
        self.broken = False
        self._parser: MultipartParser | None = None
        mime, options = parse_options_header(content_type)
        if mime != b"multipart/form-data" or not options.get(b"boundary"):
            return
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = self._value = b""
        try:
            self._parser = MultipartParser(
                options[b"boundary"],
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                },
            )
        except FormParserError:
            self.broken = True

    @property
    def active(self) -> bool:
        return self._parser is not None and not self.broken

    def feed(self, chunk: bytes) -> None:
        if not self.active or not chunk:
            return
        try:
            self._parser.write(chunk)
        except FormParserError:
            self.broken = True

    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        headers = dict(self._headers)
        _, disposition = parse_options_header(headers.get(b"content-disposition"))
        filename = disposition.get(b"filename")
        self.listener.part_started(
            _text(disposition.get(b"name", b"")),
            _text(filename) if filename is not None else None,
            _text(headers.get(b"content-type", b"")).strip(),
        )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.listener.part_data(memoryview(data)[start:end])


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")
