"""Helpers shared by fixtures and tests (tests/ is on sys.path via the rootdir conftest)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from service.storage import S3Storage

S3_TEST_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str, timeout: float, *, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once `url` answers HTTP (any status); raise TimeoutError after `timeout` seconds.

    With `process`, fail at once if it exits while we wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0):  # noqa: S310 (local test URL)
                return
        except urllib.error.HTTPError:
            return  # the server answered, even if with an error status
        except OSError as e:
            last_error = e
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with code {process.returncode} before {url} answered"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s: {last_error}")
        time.sleep(0.05)


def make_s3_storage(endpoint_url: str, **overrides: object) -> S3Storage:
    """An S3Storage on a new, uniquely named bucket of the test server."""
    options: dict[str, object] = {
        "bucket": f"test-{uuid.uuid4().hex[:16]}",
        "endpoint_url": endpoint_url,
        "region": "us-east-1",
        "addressing_style": "path",
        **S3_TEST_CREDENTIALS,
        **overrides,
    }
    storage = S3Storage(**options)  # type: ignore[arg-type]
    storage.ensure_bucket()
    return storage


def png_bytes(seed: int, size: int = 64, image_format: str = "PNG") -> bytes:
    """A small seeded test picture: a colour gradient with a bright square."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    colour = rng.uniform(0.2, 1.0, size=3)
    pixels = np.stack([np.outer(ramp, ramp[::-1]) * c for c in colour], axis=-1) * 255
    x, y = rng.integers(0, size // 2, size=2)
    pixels[y : y + size // 4, x : x + size // 4] = rng.uniform(150, 255, size=3)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype("uint8")).save(buffer, format=image_format)
    return buffer.getvalue()


def latent_file(array, name: str = "latent") -> bytes:
    """A safetensors file holding `array` under `name`."""
    import numpy as np
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(array)})
