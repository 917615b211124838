"""`rediss://` with a CA file: the service's connections (service/core/redis_connection.py)
verify a real TLS Redis server against that CA, and refuse it without; with Sentinel and
the CA file, a real TLS-only Sentinel gives the master, reached over TLS too."""

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import SENTINEL_MISSING, free_port, needs_sentinel

from latentmix.service.core.config import Settings
from latentmix.service.core.redis_connection import connect, connect_async

pytestmark = pytest.mark.skipif(
    not (
        shutil.which("redis-server") and shutil.which("redis-sentinel") and shutil.which("openssl")
    ),
    reason="needs Debian's redis-server and redis-sentinel (built with TLS) and openssl",
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA of its own and a certificate it signed for 127.0.0.1 (server.crt, server.key)."""
    root = tmp_path_factory.mktemp("tls-redis")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-days", "2", "-subj", "/CN=latentmix-test-ca", cwd=root)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=root)  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
            cwd=root)  # fmt: skip
    return root


TLS_OPTIONS = ["port 0", "tls-cert-file server.crt", "tls-key-file server.key",
               "tls-ca-cert-file ca.crt", "tls-auth-clients no"]  # fmt: skip


def tls_server(root: Path, name: str, port: int, *lines: str) -> subprocess.Popen:
    """redis-server (or, with `sentinel monitor` lines, redis-sentinel) speaking only TLS on
    `port`, from a config file of its own (Sentinel rewrites its file)."""
    config = root / f"{name}.conf"
    config.write_text("\n".join([*TLS_OPTIONS, f"tls-port {port}", *lines]) + "\n")
    program = (
        "redis-sentinel" if any(line.startswith("sentinel ") for line in lines) else "redis-server"
    )
    return subprocess.Popen(
        [program, str(config)], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_until(check, server: subprocess.Popen, what: str) -> None:
    for _ in range(100):
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        if server.poll() is not None:
            pytest.fail(f"{what} exited: is it built with TLS?")
        time.sleep(0.1)
    pytest.fail(f"{what} did not answer over TLS within 10 s")


@pytest.fixture(scope="module")
def tls_redis(certificates: Path) -> Iterator[tuple[str, Path]]:
    """A Redis server that speaks only TLS, its certificate signed by a CA of its own."""
    port = free_port()
    server = tls_server(certificates, "redis", port, 'save ""', "appendonly no")
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(
            url, ssl_ca_certs=str(certificates / "ca.crt"), socket_timeout=5
        )
        wait_until(client.ping, server, "redis-server")
        yield url, certificates / "ca.crt"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_sentinel(tls_redis, certificates: Path) -> Iterator[Settings]:
    """A Sentinel that speaks only TLS, monitoring the TLS server as master `tls-master`
    (over TLS too: tls-replication); the service's settings for it."""
    assert not SENTINEL_MISSING, "redis-server and redis-sentinel are required here"
    master_port = int(tls_redis[0].rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    server = tls_server(
        certificates,
        "sentinel",
        port,
        "tls-replication yes",
        f"sentinel monitor tls-master 127.0.0.1 {master_port} 1",
    )
    ca = certificates / "ca.crt"
    try:
        probe = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=5
        )
        wait_until(
            lambda: probe.sentinel_get_master_addr_by_name("tls-master") is not None,
            server,
            "redis-sentinel",
        )
        yield Settings(
            redis_sentinels=[f"127.0.0.1:{port}"],
            redis_sentinel_master="tls-master",
            redis_ca_file=ca,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_rediss_with_the_ca_file_verifies_and_talks_to_the_server(tls_redis):
    url, ca = tls_redis
    client = connect(Settings(redis_url=url, redis_ca_file=ca))

    client.set("latentmix:tls", "over TLS")

    assert client.get("latentmix:tls") == b"over TLS"
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)


def async_round_trip(settings: Settings, value: str) -> bytes:
    """`value` written and read back through the API's asyncio connection."""

    async def round_trip() -> bytes:
        client = connect_async(settings)
        try:
            await client.set("latentmix:tls-async", value)
            return await client.get("latentmix:tls-async")
        finally:
            await client.aclose()

    return asyncio.run(round_trip())


def test_the_async_connection_of_the_api_verifies_the_same_way(tls_redis):
    url, ca = tls_redis

    settings = Settings(redis_url=url, redis_ca_file=ca)

    assert async_round_trip(settings, "async over TLS") == b"async over TLS"


def test_without_the_ca_file_a_server_signed_by_an_unknown_ca_is_refused(tls_redis):
    url, _ = tls_redis

    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(Settings(redis_url=url)).ping()


@needs_sentinel
def test_through_a_tls_sentinel_the_master_is_found_and_talked_to_over_tls(tls_sentinel):
    client = connect(tls_sentinel)

    client.set("latentmix:sentinel-tls", "found over TLS")

    assert client.get("latentmix:sentinel-tls") == b"found over TLS"
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(tls_sentinel.redis_ca_file)


@needs_sentinel
def test_the_async_connection_finds_the_master_through_the_tls_sentinel_too(tls_sentinel):
    assert async_round_trip(tls_sentinel, "async, found over TLS") == b"async, found over TLS"


@needs_sentinel
def test_a_tls_sentinel_without_the_ca_file_is_not_asked(tls_sentinel):
    """Without the CA file the service speaks plain TCP to Sentinel, which speaks only TLS:
    the connection fails (no master found), it is not silently unencrypted."""
    plain = tls_sentinel.model_copy(update={"redis_ca_file": None})

    with pytest.raises(redis.ConnectionError):
        connect(plain, socket_timeout=2, socket_connect_timeout=2).ping()
