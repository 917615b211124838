"""`latentmix up` keeps its shutdown promise with real processes: whatever stops the launcher
(Ctrl-C with its output piped into a reader that died first, SIGHUP, SIGKILL), its children
stop with it and free their ports; a job still running when the grace period ends is
requeued, a second Ctrl-C fails it at once ("stopped by shutdown"), and a job a killed
launcher left running runs again at the next start, never reported as "worker died"."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from helpers import png_bytes, wait_ready
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from latentmix.service.cli.stack import EmbeddedRedis

pytestmark = pytest.mark.e2e

UP = [sys.executable, "-m", "latentmix.service.cli", "up"]
LONG_INVERSION = "500"
HEARTBEAT_TTL_S = 3  # DDIM steps of the tiny model: still running when the signal comes


class Up:
    """A `latentmix up` in a process group of its own (as a shell runs it), its output to
    `stdout` (a file or a pipe)."""

    def __init__(self, env: dict[str, str], stdout):
        self.env = env
        self.url = f"http://127.0.0.1:{env['LATENTMIX_PORT']}"
        self.ports = [int(env["LATENTMIX_PORT"]), int(env["LATENTMIX_EMBEDDED_REDIS_PORT"])]
        self.logs = Path(env["LATENTMIX_DATA_DIR"]) / "logs"
        self.process = subprocess.Popen(
            UP, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self) -> list[int]:
        """Until /readyz answers 200; returns the pids of every process below the launcher."""
        wait_ready(self.url, timeout=120, processes=[self.process], logs=[self.logs / "up.log"])
        return descendants(self.process.pid)

    def said(self) -> str:
        """What the launcher said (it keeps its lines in up.log, whatever its output)."""
        log = self.logs / "up.log"
        return log.read_text() if log.exists() else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def up(env: dict[str, str], stdout=subprocess.DEVNULL) -> Iterator[Up]:
    launcher = Up(env, stdout)
    pids: list[int] = []
    try:
        yield launcher
    finally:
        pids = descendants(launcher.process.pid)
        launcher.kill()
        for pid in pids:  # whatever a failed test left behind
            signal_if_alive(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Pids of every live process below `pid` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def signal_if_alive(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` (as Redis and uvicorn do: SO_REUSEADDR, so
    connections of the dead one lingering in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_all_gone(pids: list[int], ports: list[int], within: float) -> None:
    deadline = time.monotonic() + within
    while [pid for pid in pids if alive(pid)] or not all(map(port_free, ports)):
        left = [pid for pid in pids if alive(pid)]
        taken = [port for port in ports if not port_free(port)]
        assert time.monotonic() < deadline, f"still running: {left}; ports taken: {taken}"
        time.sleep(0.1)


def start_long_job(url: str, seed: int) -> str:
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post(
            "/latents",
            files=[("images", (f"image{seed}.png", png_bytes(seed), "image/png"))],
            # Regenerated inside the job too (`all`): twice the steps, long enough to be
            # running through a signal, a restart and a heartbeat TTL.
            data={
                "inversion_steps": LONG_INVERSION,
                "guidance_scale": "1",
                "measure_reconstruction": "all",
            },
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job"]["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/jobs/{job_id}").json()["progress"]["done"] < 1:
            assert time.monotonic() < deadline, f"job {job_id} never started"
            time.sleep(0.05)
    return job_id


@contextmanager
def stored_job(env: dict[str, str], job_id: str, log: Path) -> Iterator[Job]:
    """The job as the stopped service's Redis kept it (its append-only file, read back)."""
    data_dir = Path(env["LATENTMIX_DATA_DIR"])
    redis = EmbeddedRedis(data_dir / "redis", int(env["LATENTMIX_EMBEDDED_REDIS_PORT"]), log)
    redis.start()
    try:
        with Redis.from_url(redis.url) as connection:
            yield Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    finally:
        redis.stop()


def test_a_sigkilled_launcher_takes_its_children_and_ports_with_it_and_its_job_runs_again(
    up_environment, tmp_path
):
    with up(up_environment) as service:
        children = service.wait_ready()
        job_id = start_long_job(service.url, seed=81)

        service.process.send_signal(signal.SIGKILL)  # no handler runs: the kernel's signal does
        service.process.wait()

        assert len(children) >= 3, children  # Redis, the worker (and its writer), the API
        assert_all_gone(children, service.ports, within=20)

    env = up_environment | {
        "LATENTMIX_SHUTDOWN_GRACE_S": "0",
        "LATENTMIX_WORKER_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
        "LATENTMIX_REAPER_INTERVAL_S": "1",
    }
    with up(env) as again:
        again.wait_ready()
        # Requeued by the dying worker (if Redis still answered) or else at this start, it
        # runs to the end through heartbeat TTLs and reaper rounds: never "worker died".
        with httpx.Client(base_url=again.url, timeout=60) as client:
            job, deadline = {"status": "queued"}, time.monotonic() + 240
            while job["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                job = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
            assert job["status"] == "succeeded", job
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(timeout=60) == 0, again.said()


def test_ctrl_c_with_the_output_reader_dead_stops_in_order_and_requeues_a_job_past_the_grace(
    up_environment, tmp_path
):
    # `latentmix up 2>&1 | tee log`, then Ctrl-C: the terminal's SIGINT kills tee first.
    env = up_environment | {"LATENTMIX_SHUTDOWN_GRACE_S": "1"}
    tee = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    with up(env, stdout=tee.stdin) as service:
        tee.stdin.close()  # the launcher holds the only write end
        children = service.wait_ready()
        job_id = start_long_job(service.url, seed=82)
        tee.kill()
        tee.wait()

        service.process.send_signal(signal.SIGINT)

        assert service.process.wait(timeout=60) == 0, service.said()
        assert_all_gone(children, service.ports, within=5)
    said = service.said()
    assert said.index("stopping the API") < said.index("stopping Redis"), said
    assert "waiting up to 1 s (LATENTMIX_SHUTDOWN_GRACE_S)" in said, said
    assert f"invert {job_id[:8]} (tiny)" in said, said  # what it waits for, with progress
    assert "requeued for the next start" in said, said
    with stored_job(env, job_id, tmp_path / "redis.log") as job:
        assert job.get_status() == JobStatus.QUEUED
        assert job.meta["interrupted"] == 1 and job.meta["progress"]["done"] == 0
        assert job.connection.lindex("rq:queue:latentmix:tiny", 0).decode() == job_id
        assert job.connection.get(f"latentmix:job-ended:{job_id}") is None  # not counted


def test_sighup_stops_like_ctrl_c_and_a_second_signal_fails_the_job_stopped_by_shutdown(
    up_environment, tmp_path
):
    with up(up_environment) as service:
        children = service.wait_ready()
        job_id = start_long_job(service.url, seed=83)

        service.process.send_signal(signal.SIGHUP)  # the terminal closed
        deadline = time.monotonic() + 30
        while "Ctrl-C again stops now" not in service.said():
            assert time.monotonic() < deadline, service.said()
            time.sleep(0.1)
        service.process.send_signal(signal.SIGINT)

        assert service.process.wait(timeout=30) == 0, service.said()
        assert_all_gone(children, service.ports, within=5)
    assert "failed (stopped by shutdown)" in service.said()
    with stored_job(up_environment, job_id, tmp_path / "redis.log") as job:
        assert job.get_status() == JobStatus.FAILED
        assert "stopped by shutdown" in job.latest_result().exc_string
        assert job.connection.get(f"latentmix:job-ended:{job_id}") is not None  # counted once
