"""`rediss://` with a CA file: the service's connections (service/core/redis_connection.py)
verify a real TLS Redis server against that CA, and refuse it without."""

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import free_port

from latentmix.service.core.config import Settings
from latentmix.service.core.redis_connection import connect, connect_async

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("openssl")),
    reason="needs Debian's redis-server (built with TLS) and openssl",
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Redis server that speaks only TLS, its certificate signed by a CA of its own."""
    root = tmp_path_factory.mktemp("tls-redis")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-days", "2", "-subj", "/CN=latentmix-test-ca", cwd=root)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=root)  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
            cwd=root)  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, ssl_ca_certs=str(root / "ca.crt"))
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None:
                    pytest.fail("redis-server exited: is it built with TLS?")
                time.sleep(0.1)
        yield url, root / "ca.crt"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_rediss_with_the_ca_file_verifies_and_talks_to_the_server(tls_redis):
    url, ca = tls_redis
    client = connect(Settings(redis_url=url, redis_ca_file=ca))

    client.set("latentmix:tls", "over TLS")

    assert client.get("latentmix:tls") == b"over TLS"
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)


def test_the_async_connection_of_the_api_verifies_the_same_way(tls_redis):
    url, ca = tls_redis

    async def round_trip() -> bytes:
        client = connect_async(Settings(redis_url=url, redis_ca_file=ca))
        try:
            await client.set("latentmix:tls-async", "async over TLS")
            return await client.get("latentmix:tls-async")
        finally:
            await client.aclose()

    assert asyncio.run(round_trip()) == b"async over TLS"


def test_without_the_ca_file_a_server_signed_by_an_unknown_ca_is_refused(tls_redis):
    url, _ = tls_redis

    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(Settings(redis_url=url)).ping()
