"""Decisions of `scripts/bootstrap`: which torch build to install, and whether the venv is
already up to date. Standard library only: it runs with the new venv's bare Python.

    python scripts/install_plan.py torch-args SPEC      # pip arguments for torch, one a line
    python scripts/install_plan.py extras STAMP KEY EXTRAS   # extras to install ("" = none)
    python scripts/install_plan.py record STAMP KEY EXTRAS   # after a successful install

**torch.** `torch==2.13.0` from PyPI on Linux is the CUDA build (~2.7 GB of wheels with its
nvidia-* libraries). On a machine without an NVIDIA GPU that is wasted, so `torch-args` asks
pip which wheel it would pick (`pip install --dry-run --report`) and adds PyTorch's CPU
index only when the pick is a CUDA build *and* no NVIDIA GPU is present. Any other pick (the
CPU wheel, macOS, a local wheel from the pip configuration) is left as it is, so a machine
that cannot reach PyTorch's index never needs it. `TORCH_INDEX_URL` overrides the decision:
its value goes to pip as `--index-url` for the torch install, with no probing.

**Stamp.** The venv remembers the extras it holds and a key (pyproject.toml's hash, the torch
spec and index). A call whose extras are a subset of those installed under the same key does
nothing; otherwise the union of both sets is installed, so alternating `scripts/test` (dev)
and `scripts/up` (api,worker,embedded,client) installs once, not on every switch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
# Requirements that only a CUDA build of torch has (nvidia-cudnn-cu13, cuda-toolkit[...]).
CUDA_REQUIREMENT_PREFIXES = ("nvidia-", "cuda-toolkit", "cuda-bindings")


# --------------------------------------------------------------------------------------------
# torch: CUDA or CPU build
# --------------------------------------------------------------------------------------------


def _requirement_name(requirement: str) -> str:
    for i, char in enumerate(requirement):
        if not (char.isalnum() or char in "-_."):
            return requirement[:i].lower()
    return requirement.lower()


def torch_pick(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The torch entry of a `pip install --report` document, or None."""
    for item in report.get("install", []):
        if item.get("metadata", {}).get("name", "").lower() == "torch":
            return item
    return None


def is_cuda_build(report: Mapping[str, Any]) -> bool:
    """Whether pip's pick of torch is a CUDA build: a `+cuXXX` version, or (on Linux, where
    PyPI's wheel is the CUDA one) requirements on NVIDIA's CUDA libraries."""
    item = torch_pick(report)
    if item is None:
        return False
    metadata = item["metadata"]
    local = metadata.get("version", "").partition("+")[2]
    if local:
        return local.startswith("cu")
    if report.get("environment", {}).get("platform_system") != "Linux":
        return False  # the markers of those requirements say platform_system == "Linux"
    return any(
        _requirement_name(r).startswith(CUDA_REQUIREMENT_PREFIXES)
        for r in metadata.get("requires_dist", [])
    )


def has_nvidia_gpu(proc_driver: Path = Path("/proc/driver/nvidia/gpus")) -> bool:
    """An NVIDIA GPU with its driver loaded: the kernel lists it, or `nvidia-smi -L` does."""
    if proc_driver.is_dir() and any(proc_driver.iterdir()):
        return True
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def torch_index_args(
    report: Mapping[str, Any] | None, *, gpu: bool, override: str | None = None
) -> list[str]:
    """Extra pip arguments for installing torch.

    `override` (TORCH_INDEX_URL) wins; otherwise the CPU index only for a CUDA pick on a
    machine without an NVIDIA GPU. No report (pip could not answer) changes nothing.
    """
    if override:
        return ["--index-url", override]
    if report is not None and is_cuda_build(report) and not gpu:
        return ["--index-url", CPU_INDEX_URL]
    return []


def pip_report(spec: str, python: str = sys.executable) -> dict[str, Any] | None:
    """What `pip install SPEC` would install here (without dependencies), or None if pip
    cannot tell (offline, old pip)."""
    command = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
    command += ["--no-deps", "--report", "-", spec]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------------------------
# The install stamp
# --------------------------------------------------------------------------------------------


def parse_extras(extras: str | Iterable[str]) -> frozenset[str]:
    if isinstance(extras, str):
        extras = extras.split(",")
    return frozenset(e.strip() for e in extras if e.strip())


def implied_extras(pyproject: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Each extra with the project's own extras it includes, transitively: `dev =
    ["latentmix[api,worker]", ...]` means dev holds api and worker too."""
    project = pyproject["project"]
    own = re.compile(rf"^{re.escape(project['name'])}\[([^\]]*)\]", re.IGNORECASE)
    direct = {
        extra: parse_extras(",".join(m[1] for r in requirements if (m := own.match(r))))
        for extra, requirements in project.get("optional-dependencies", {}).items()
    }

    def closure(extra: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        held = {extra}
        for sub in direct.get(extra, ()):
            if sub not in seen:
                held |= closure(sub, seen | {extra})
        return frozenset(held)

    return {extra: closure(extra) for extra in direct}


def expand(extras: Iterable[str], implied: Mapping[str, frozenset[str]]) -> frozenset[str]:
    return frozenset().union(*(implied.get(e, {e}) for e in extras))


def read_stamp(stamp: Path) -> tuple[str, frozenset[str]] | None:
    """(key, extras) of the last successful install, or None (absent, older format)."""
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
        return data["key"], parse_extras(data["extras"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def extras_to_install(
    stamp: Path,
    key: str,
    wanted: str | Iterable[str],
    implied: Mapping[str, frozenset[str]] | None = None,
) -> frozenset[str]:
    """Empty when the venv already holds `wanted` under `key` (an extra counts as held when an
    installed one includes it, see `implied_extras`); otherwise what to install: the wanted
    extras plus those installed before (never fewer than the venv had)."""
    wanted = parse_extras(wanted)
    implied = implied or {}
    installed = read_stamp(stamp)
    if installed is None:
        return wanted
    installed_key, installed_extras = installed
    if installed_key == key and expand(wanted, implied) <= expand(installed_extras, implied):
        return frozenset()
    return wanted | installed_extras


def write_stamp(stamp: Path, key: str, extras: str | Iterable[str]) -> None:
    record = {"key": key, "extras": sorted(parse_extras(extras))}
    stamp.write_text(json.dumps(record) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------


def main(argv: list[str], environ: Mapping[str, str] = os.environ) -> int:
    command, *args = argv
    if command == "torch-args" and len(args) == 1:
        override = environ.get("TORCH_INDEX_URL")
        report = None if override else pip_report(args[0])
        cuda = report is not None and is_cuda_build(report)
        extra = torch_index_args(report, gpu=cuda and has_nvidia_gpu(), override=override)
        if extra and not override:
            print(
                f"bootstrap: pip would install a CUDA build of {args[0]} and there is no NVIDIA "
                f"GPU: installing the CPU build from {CPU_INDEX_URL} (TORCH_INDEX_URL overrides)",
                file=sys.stderr,
            )
        print("\n".join(extra))
    elif command == "extras" and len(args) == 3:
        pyproject = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))
        todo = extras_to_install(Path(args[0]), args[1], args[2], implied_extras(pyproject))
        print(",".join(sorted(todo)))
    elif command == "record" and len(args) == 3:
        write_stamp(Path(args[0]), args[1], args[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
