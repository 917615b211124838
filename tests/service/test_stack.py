"""ServiceStack's own rules, with stand-in processes: settings passed as the environment,
the embedded Redis in a session of its own on its fixed port, worker i on GPU i, and
workers that exit restarted with a backoff. The real stack runs in tests/e2e."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

import pytest
from helpers import free_port

from latentmix.service.cli import main as cli
from latentmix.service.cli.stack import (
    EmbeddedRedis,
    RestartPolicy,
    ServiceStack,
    StackError,
    gpu_count,
    worker_device,
)
from latentmix.service.core.config import Settings


def test_settings_pass_to_a_child_as_the_environment_that_reads_them_back(monkeypatch):
    settings = Settings(
        model="tiny",
        data_dir=Path("/srv/data"),
        redis_url="redis://example:6380/3",
        api_keys="k" * 16 + "," + "l" * 20,
        cors_origins="",
        compile=True,
        max_wait_s=7.5,
    )
    for name in list(os.environ):
        if name.startswith("LATENTMIX_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    for name, value in settings.environment().items():
        monkeypatch.setenv(name, value)

    assert Settings() == settings


def test_a_child_gets_the_settings_not_the_callers_latentmix_variables(tmp_path):
    env = {"LATENTMIX_MODEL": "other", "REDIS_URL": "redis://stale/0", "HF_HUB_OFFLINE": "1"}
    stack = ServiceStack(
        Settings(model="tiny", data_dir=tmp_path, redis_url="redis://here:1/0"), env=env, gpus=0
    )

    child_env = stack.environment()

    assert child_env["LATENTMIX_MODEL"] == "tiny"
    assert child_env["REDIS_URL"] == "redis://here:1/0"
    assert child_env["HF_HUB_OFFLINE"] == "1"


# --- devices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "gpus", "expected"),
    [
        ("auto", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]),
        ("auto", 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
        ("auto", 1, ["auto"] * 5),  # one GPU: `auto` picks it
        ("auto", 0, ["auto"] * 5),
        ("cuda:1", 4, ["cuda:1"] * 5),  # an explicit device is kept
        ("cpu", 4, ["cpu"] * 5),
    ],
)
def test_with_device_auto_worker_i_runs_on_gpu_i_mod_the_gpu_count(setting, gpus, expected):
    assert [worker_device(setting, i, gpus) for i in range(5)] == expected


def test_each_worker_child_starts_with_its_device(tmp_path):
    stack = ServiceStack(
        Settings(model="tiny", data_dir=tmp_path, redis_url="redis://here:1/0"), workers=3, gpus=2
    )

    devices = [stack._worker_child(i).env["LATENTMIX_DEVICE"] for i in range(3)]

    assert devices == ["cuda:0", "cuda:1", "cuda:0"]
    assert "cuda:0, cuda:1, cuda:0" in stack.banner()


@pytest.mark.parametrize(
    ("visible", "count"), [("0,1,2", 3), ("3", 1), ("", 0), ("-1", 0), ("1,-1,2", 1)]
)
def test_cuda_visible_devices_decides_the_gpu_count(visible, count):
    assert gpu_count({"CUDA_VISIBLE_DEVICES": visible}) == count


def test_without_cuda_visible_devices_nvidia_smi_counts_the_gpus(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: a)'\necho 'GPU 1: NVIDIA H100 (UUID: b)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert gpu_count({}) == 2
    fake.unlink()
    assert gpu_count({}) == 0  # no driver, no GPU


# --- the embedded Redis ----------------------------------------------------------------------


def test_the_embedded_redis_runs_in_a_session_of_its_own_on_its_port(tmp_path):
    port = free_port()
    redis = EmbeddedRedis(tmp_path / "redis", port, tmp_path / "redis.log")
    redis.start()
    try:
        # A terminal's Ctrl-C goes to its foreground process group: not this one.
        assert os.getsid(redis.child.pid) == redis.child.pid != os.getsid(0)
        assert os.getpgid(redis.child.pid) != os.getpgid(0)
        assert redis.url == f"redis://127.0.0.1:{port}/0"
    finally:
        redis.stop()
    assert not redis.running


def test_a_taken_embedded_redis_port_is_a_clear_error_naming_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        redis = EmbeddedRedis(tmp_path / "redis", port, tmp_path / "redis.log")

        with pytest.raises(StackError, match=f"port {port} is taken") as error:
            redis.start()

    assert "LATENTMIX_EMBEDDED_REDIS_PORT" in str(error.value)
    assert "REDIS_URL" in str(error.value)


# --- workers that exit -----------------------------------------------------------------------


def stand_in_stack(tmp_path: Path, code: str, **policy) -> ServiceStack:
    """A stack whose worker is `python -c CODE`, on a Redis nobody starts, without an API."""
    return ServiceStack(
        Settings(model="tiny", data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"),
        worker_command=["-c", code],
        restart=RestartPolicy(**policy),
        gpus=0,
        out=lambda line: None,
    )


def watch(stack: ServiceStack, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stack.check()
        time.sleep(0.02)


def test_a_worker_that_lost_its_device_is_replaced_by_a_fresh_process(tmp_path):
    said = []
    stack = stand_in_stack(tmp_path, "import os; os._exit(os.EX_TEMPFAIL)", backoff_s=0.01)
    stack.out = said.append
    lost = stack.add_worker()
    lost.process.wait()

    watch(stack, 0.1)

    assert stack.workers[0] is not lost
    assert stack.workers[0].argv == lost.argv  # the same command, a new process
    assert stack.slots[0].history[0] == os.EX_TEMPFAIL
    assert said[0].startswith("worker 0 lost its device; starting a new one")
    stack.kill_worker()


def test_a_worker_that_exits_unexpectedly_is_started_again(tmp_path):
    # Exits with 1 after running for longer than the start window: not a start crash.
    stack = stand_in_stack(
        tmp_path, "import time, sys; time.sleep(0.3); sys.exit(1)", start_window_s=0.1, backoff_s=0
    )
    first = stack.add_worker()

    watch(stack, 1.5)

    assert stack.workers[0] is not first
    assert stack.slots[0].history[:2] == [1, 1]  # restarted, died again, restarted again
    assert stack.slots[0].crashes == 0
    stack.kill_worker()


def test_a_worker_that_keeps_crashing_at_start_stops_the_stack_with_a_clear_error(tmp_path):
    stack = stand_in_stack(
        tmp_path,
        "import sys; print('no model here', flush=True); sys.exit(3)",
        start_window_s=10,
        max_start_crashes=4,
        backoff_s=0.3,
    )
    stack.add_worker()
    starts = []
    start_worker = stack.start_worker
    stack.start_worker = lambda index=0: starts.append(time.monotonic()) or start_worker(index)

    with pytest.raises(StackError) as error:
        watch(stack, 10)

    message = str(error.value)
    assert "worker 0 exited 4 times in a row within 10 s of starting" in message
    assert "last exit code 3" in message and "no model here" in message  # its log
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 3  # three restarts, then no fourth
    assert gaps[0] >= 0.6 and gaps[1] - gaps[0] > 0.4  # waits of 0.3, 0.6, 1.2 s: doubling


def test_the_banner_says_where_everything_is_without_the_redis_password(tmp_path):
    settings = Settings(
        model="tiny", data_dir=tmp_path, redis_url="redis://:s3cret@db:6379/0", port=8123
    )

    banner = ServiceStack(settings, workers=2, gpus=0).banner()

    assert "s3cret" not in banner
    assert "Redis     redis://:***@db:6379/0 (external)" in banner
    assert "API       http://127.0.0.1:8123" in banner
    assert "studio    http://127.0.0.1:8123/studio" in banner
    assert f"storage   {tmp_path.resolve() / 'store'}" in banner
    assert "model     tiny" in banner and "workers   2 on auto, auto" in banner


# --- several models side by side ----------------------------------------------------------


def test_each_model_gets_its_own_workers_and_the_first_is_the_apis_default(tmp_path):
    settings = Settings(model="ignored", data_dir=tmp_path, redis_url="redis://here:1/0")
    stack = ServiceStack(settings, workers=2, models=["tiny", "tiny-sd3"], gpus=0)

    models = [stack._worker_child(i, stack._model_of(i)).env["LATENTMIX_MODEL"] for i in range(4)]

    assert stack.worker_count == 4
    assert models == ["tiny", "tiny", "tiny-sd3", "tiny-sd3"]
    assert stack.environment()["LATENTMIX_MODEL"] == "tiny"  # the API's default
    assert "models    tiny, tiny-sd3" in stack.banner()


def test_latentmix_up_takes_one_model_option_per_model(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "run_up", lambda settings, **options: calls.append(options) or 0)

    with pytest.raises(SystemExit) as exit_:
        cli.main(["up", "--model", "tiny", "--model", "tiny-sd3", "--workers", "2"])

    assert exit_.value.code == 0
    assert calls == [{"workers": 2, "models": ["tiny", "tiny-sd3"]}]
