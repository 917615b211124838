"""The worker's start-up log: the worker's own lines, not library advice meant for others."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentmix.worker.quiet import TRANSFORMERS_IMPORT_LOGGER, quiet_libraries

TORCHVISION_WARNING = "requires torchvision (not installed)"


def run_python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        check=True,
    )
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def transformers_warns_without_torchvision() -> None:
    """The noise is real here: transformers' fallback warning, when nothing silences it."""
    output = run_python("import transformers; transformers.CLIPImageProcessor")
    if TORCHVISION_WARNING not in output:
        pytest.skip("this transformers does not warn (torchvision installed?)")


def test_other_warnings_of_that_logger_still_show():
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        quiet_libraries(stream=_Terminal())
        logger.warning("`X` requires torchvision (not installed); falling back to `XPil` ...")
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else went wrong"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_stay_on_a_terminal_and_go_in_a_log():
    check = (
        "import io; from latentmix.worker.quiet import quiet_libraries\n"
        "from diffusers.utils import logging as d; from transformers.utils import logging as t\n"
        "from huggingface_hub.utils import are_progress_bars_disabled as hub_off\n"
        "class T(io.StringIO):\n    def isatty(self): return True\n"
        "quiet_libraries(T())\n"
        "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(), not hub_off())\n"
        "quiet_libraries(io.StringIO())\n"
        "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(), not hub_off())\n"
    )
    on_terminal, in_a_log = run_python(check).splitlines()[-2:]
    assert on_terminal.split() == ["True", "True", "True"]
    assert in_a_log.split() == ["False", "False", "False"]


def test_worker_start_log_has_no_library_noise(
    transformers_warns_without_torchvision, own_redis_url: str, tmp_path: Path
):
    """`latentmix worker --burst` on the tiny model, its log read as a file (not a terminal)."""
    done = subprocess.run(
        [sys.executable, "-m", "latentmix.worker", "--burst"],
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "LATENTMIX_MODEL": "tiny",
            "LATENTMIX_DATA_DIR": str(tmp_path),
            "REDIS_URL": own_redis_url,
        },
        check=True,
    )
    log = done.stdout + done.stderr
    assert "model tiny ready" in log
    assert TORCHVISION_WARNING not in log
    assert "\r" not in log  # no progress bars
    assert "[transformers]" not in log
