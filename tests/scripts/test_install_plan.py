"""scripts/install_plan.py: the torch build `scripts/bootstrap` installs, and its install stamp.

The pip reports in data/ are real answers of `pip install --dry-run --report - --no-deps
torch==2.13.0`, trimmed to the fields the decision reads: one from PyPI on Linux x86_64 (the
CUDA build, with its nvidia-* and cuda-toolkit requirements) and one from this machine's
local wheel (`2.13.0+cpu`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"

_spec = importlib.util.spec_from_file_location("install_plan", ROOT / "scripts/install_plan.py")
install_plan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_plan)


def report(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


PYPI_LINUX = report("pip-report-torch-pypi-linux.json")
CPU_WHEEL = report("pip-report-torch-cpu-wheel.json")


def with_version(base: dict, version: str, requires: list[str] | None = None) -> dict:
    changed = copy.deepcopy(base)
    metadata = changed["install"][0]["metadata"]
    metadata["version"] = version
    if requires is not None:
        metadata["requires_dist"] = requires
    return changed


def on_system(base: dict, system: str) -> dict:
    changed = copy.deepcopy(base)
    changed["environment"]["platform_system"] = system
    return changed


# --------------------------------------------------------------------------------------------
# Which build did pip pick?
# --------------------------------------------------------------------------------------------


def test_pypi_torch_on_linux_is_a_cuda_build():
    assert install_plan.is_cuda_build(PYPI_LINUX)


def test_local_cpu_wheel_is_not_a_cuda_build():
    assert not install_plan.is_cuda_build(CPU_WHEEL)


def test_a_cu_local_version_is_a_cuda_build_even_without_nvidia_requirements():
    assert install_plan.is_cuda_build(with_version(CPU_WHEEL, "2.13.0+cu130", requires=[]))


def test_the_same_metadata_on_macos_is_not_a_cuda_build():
    """PyPI's macOS wheels are CPU/MPS builds; the nvidia-* requirements are Linux-only."""
    assert not install_plan.is_cuda_build(on_system(PYPI_LINUX, "Darwin"))


def test_a_report_without_torch_is_not_a_cuda_build():
    assert not install_plan.is_cuda_build({"install": []})


# --------------------------------------------------------------------------------------------
# The decision table
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pick", "gpu", "override", "expected"),
    [
        (PYPI_LINUX, False, None, ["--index-url", install_plan.CPU_INDEX_URL]),
        (PYPI_LINUX, True, None, []),
        (CPU_WHEEL, False, None, []),
        (CPU_WHEEL, True, None, []),
        (None, False, None, []),  # pip could not answer: install as before
        (PYPI_LINUX, False, "https://mirror/torch", ["--index-url", "https://mirror/torch"]),
        (
            CPU_WHEEL,
            True,
            "https://download.pytorch.org/whl/cu130",
            ["--index-url", "https://download.pytorch.org/whl/cu130"],
        ),
    ],
    ids=[
        "cuda-pick-no-gpu-gets-cpu-index",
        "cuda-pick-with-gpu-as-is",
        "cpu-pick-as-is",
        "cpu-pick-with-gpu-as-is",
        "no-report-as-is",
        "override-wins",
        "override-wins-on-gpu",
    ],
)
def test_torch_index_args(pick, gpu, override, expected):
    assert install_plan.torch_index_args(pick, gpu=gpu, override=override) == expected


def test_no_gpu_when_the_driver_lists_none_and_nvidia_smi_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert not install_plan.has_nvidia_gpu(tmp_path / "absent")


def test_a_gpu_listed_by_the_driver_counts(tmp_path):
    (tmp_path / "0000:01:00.0").mkdir()
    assert install_plan.has_nvidia_gpu(tmp_path)


def test_nvidia_smi_listing_a_gpu_counts(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert install_plan.has_nvidia_gpu(tmp_path / "absent")


def test_torch_args_command_with_override_does_not_ask_pip(capsys, monkeypatch):
    monkeypatch.setattr(install_plan, "pip_report", pytest.fail)
    assert install_plan.main(["torch-args", "torch==2.13.0"], {"TORCH_INDEX_URL": "https://i"}) == 0
    assert capsys.readouterr().out.split() == ["--index-url", "https://i"]


def test_torch_args_command_on_a_cpu_machine_given_pypis_pick(capsys, monkeypatch):
    monkeypatch.setattr(install_plan, "pip_report", lambda spec: PYPI_LINUX)
    monkeypatch.setattr(install_plan, "has_nvidia_gpu", lambda: False)
    assert install_plan.main(["torch-args", "torch==2.13.0"], {}) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["--index-url", install_plan.CPU_INDEX_URL]
    assert "no NVIDIA GPU" in captured.err


def test_pip_report_reads_this_machines_pick():
    """The real pip answers (here: the local CPU wheel of the pip configuration)."""
    answer = install_plan.pip_report("torch==2.13.0")
    assert answer is not None
    assert install_plan.torch_pick(answer)["metadata"]["version"].startswith("2.13.0")


# --------------------------------------------------------------------------------------------
# The install stamp
# --------------------------------------------------------------------------------------------

UP = "api,worker,embedded,client"
TEST = "dev"


def test_scripts_up_installs_the_client_its_users_run_next():
    """After `scripts/up` alone, the Python client example and `latentmix augment` work
    (they need the client extra: httpx)."""
    [extras] = re.findall(r'scripts/bootstrap "([^"]+)"', (ROOT / "scripts/up").read_text())
    assert "client" in extras.split(",")
    assert extras == UP


def test_a_fresh_venv_installs_what_is_asked(tmp_path):
    assert install_plan.extras_to_install(tmp_path / "stamp", "k", UP) == {
        "api",
        "worker",
        "embedded",
        "client",
    }


IMPLIED = install_plan.implied_extras(
    tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
)


def installs_for(stamp: Path, calls: list[str]) -> list[frozenset[str]]:
    installs = []
    for extras in calls:
        todo = install_plan.extras_to_install(stamp, "k", extras, IMPLIED)
        if todo:
            installs.append(todo)
            install_plan.write_stamp(stamp, "k", todo)
    return installs


def test_dev_includes_what_up_needs():
    assert {"api", "worker", "embedded", "client"} <= IMPLIED["dev"]


def test_switching_from_test_to_up_installs_once(tmp_path):
    assert installs_for(tmp_path / "stamp", [TEST, UP, TEST, UP]) == [{"dev"}]


def test_switching_from_up_to_test_installs_twice_then_never(tmp_path):
    assert installs_for(tmp_path / "stamp", [UP, TEST, UP, TEST, UP]) == [
        {"api", "worker", "embedded", "client"},
        {"api", "worker", "embedded", "client", "dev"},
    ]


def test_implied_extras_follow_self_references_transitively():
    pyproject = {
        "project": {
            "name": "latentmix",
            "optional-dependencies": {
                "a": ["x"],
                "b": ["LatentMix[a]>=0", "y"],
                "c": ["latentmix[b]"],
            },
        }
    }
    assert install_plan.implied_extras(pyproject)["c"] == {"a", "b", "c"}


def test_a_subset_of_what_is_installed_installs_nothing(tmp_path):
    stamp = tmp_path / "stamp"
    install_plan.write_stamp(stamp, "k", "dev,api,worker,embedded")
    assert install_plan.extras_to_install(stamp, "k", "api") == frozenset()


def test_a_new_key_reinstalls_everything_the_venv_had(tmp_path):
    """pyproject.toml or the torch spec changed: refresh all installed extras, not only the
    asked ones, so the next switch does not install again."""
    stamp = tmp_path / "stamp"
    install_plan.write_stamp(stamp, "old", "dev,api")
    assert install_plan.extras_to_install(stamp, "new", "api") == {"api", "dev"}


def test_an_old_format_stamp_installs_again(tmp_path):
    stamp = tmp_path / "stamp"
    stamp.write_text("0123456789abcdef api,worker,embedded torch==2.13.0\n")
    assert install_plan.extras_to_install(stamp, "k", UP) == {"api", "worker", "embedded", "client"}


def test_extras_and_record_commands_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands read ./pyproject.toml, as scripts/bootstrap runs them
    stamp = str(tmp_path / "stamp")
    assert install_plan.main(["extras", stamp, "k", TEST]) == 0
    assert capsys.readouterr().out.strip() == "dev"
    install_plan.main(["record", stamp, "k", "dev"])
    install_plan.main(["extras", stamp, "k", TEST])
    assert capsys.readouterr().out.strip() == ""
    install_plan.main(["extras", stamp, "k", UP])  # dev holds api, worker and embedded
    assert capsys.readouterr().out.strip() == ""
