"""Storage writes in a child process, so that they never hold the worker's GIL.

The worker's main thread feeds the model from Python: every UNet step is a few hundred
small calls into torch, each of which releases and retakes the GIL. A boto3 request is
about 3 ms of pure Python; made on a background thread of the same process, it takes the
GIL whenever the main thread lets go and keeps it for up to the switch interval (5 ms), so
uploading a batch while the next one computes slowed the computation by half (measured on
the `tiny` model; bench/RESULTS.md). In a child process the same writes cost the compute
thread nothing.

`OffloadedWrites` is a `Storage` whose `put` runs in the child (`python -m worker.writer`)
and whose reads stay in this process. The protocol on the child's stdin and stdout is
length-prefixed JSON headers, each request followed by its raw payload: no pickle.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from latentmix.service.core.config import Settings
from latentmix.service.core.storage import (
    STORAGE_SETTINGS,
    Storage,
    storage_from_settings,
    validate_key,
)

_LENGTH = struct.Struct("<Q")
WRITE_THREADS = 8  # writes the child makes side by side


class StorageWriteFailed(RuntimeError):
    """A write in the writer process failed, or the process is gone."""


class OffloadedWrites(Storage):
    """The configured store: its reads in this process, its writes in a child process
    (started at once, and again on the next write after it died). Both build the store from
    the same settings, so they always use the same one."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.inner = storage_from_settings(settings)
        self._settings = settings.model_dump(mode="json", include=STORAGE_SETTINGS)
        self._lock = threading.Lock()
        self._child: _WriterProcess | None = _WriterProcess(self._settings)

    def put(self, key: str, data: bytes, content_type: str, *, if_absent: bool = False) -> bool:
        validate_key(key)
        request = {"key": key, "content_type": content_type, "if_absent": if_absent}
        return self._writer().submit(request, data).result()

    def _writer(self) -> _WriterProcess:
        with self._lock:
            if self._child is None or not self._child.alive:
                self._child = _WriterProcess(self._settings)
            return self._child

    def close(self) -> None:
        """Let the child finish its writes and exit."""
        with self._lock:
            if self._child is not None:
                self._child.close()
                self._child = None

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return self.inner.get(key, max_bytes=max_bytes)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def url(self, key: str) -> str | None:
        return self.inner.url(key)

    def check(self) -> None:
        self.inner.check()


class _WriterProcess:
    def __init__(self, settings: dict[str, Any]) -> None:
        # Its own session: a Ctrl-C meant for the worker (which finishes its job on the first
        # one) must not kill the writes. The child exits when its stdin closes.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "latentmix.worker.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.alive = True
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()
        _send(self.process.stdin, {"settings": settings})
        threading.Thread(target=self._read_replies, name="latentmix-writer", daemon=True).start()

    def submit(self, request: dict[str, Any], data: bytes) -> Future:
        future: Future = Future()
        with self._send_lock:
            if not self.alive:
                raise StorageWriteFailed(self._death())
            request_id = next(self._ids)
            self._pending[request_id] = future
            # If the child is gone, the reader thread fails what is pending.
            with contextlib.suppress(OSError):
                _send(self.process.stdin, request | {"id": request_id}, data)
        return future

    def _read_replies(self) -> None:
        while (message := _receive(self.process.stdout)) is not None:
            reply, _ = message
            future = self._pending.pop(reply["id"])
            if "error" in reply:
                future.set_exception(StorageWriteFailed(reply["error"]))
            else:
                future.set_result(reply["stored"])
        with self._send_lock:
            self.alive = False
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(StorageWriteFailed(self._death()))

    def _death(self) -> str:
        return f"the storage writer process exited (code {self.process.poll()})"

    def close(self) -> None:
        with self._send_lock:
            self.process.stdin.close()
        self.process.wait()


def _send(stream: IO[bytes], header: dict[str, Any], data: bytes = b"") -> None:
    encoded = json.dumps(header | {"size": len(data)}).encode()
    stream.write(_LENGTH.pack(len(encoded)) + encoded)
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """The next header and its payload; None at the end of the stream."""
    prefix = stream.read(_LENGTH.size)
    if len(prefix) < _LENGTH.size:
        return None
    header = json.loads(stream.read(_LENGTH.unpack(prefix)[0]))
    data = stream.read(header["size"])
    if len(data) < header["size"]:
        return None
    return header, data


def main() -> None:
    """The child: writes each request's payload, replies in the order writes finish."""
    requests = sys.stdin.buffer
    # The replies get their own copy of stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    first = _receive(requests)
    if first is None:
        return
    storage = storage_from_settings(Settings(**first[0]["settings"]))
    reply_lock = threading.Lock()

    def write(request: dict[str, Any], data: bytes) -> None:
        reply: dict[str, Any] = {"id": request["id"]}
        try:
            reply["stored"] = storage.put(
                request["key"], data, request["content_type"], if_absent=request["if_absent"]
            )
        except Exception as exc:
            reply["error"] = f"{type(exc).__name__}: {exc}"
        with reply_lock:
            _send(replies, reply)

    with ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="latentmix-write") as pool:
        while (message := _receive(requests)) is not None:
            pool.submit(write, *message)


if __name__ == "__main__":
    main()
