"""Every module of the package imports alone, in an interpreter that has imported nothing of
`latentmix` before it (an import cycle shows only in the order that meets it first; a
conftest or an earlier test that imports `models` first would hide it).

One interpreter per module costs ~10 s of torch import each on this machine, so one
subprocess imports the third-party libraries the package uses, then forks one child per
module: each child starts with no `latentmix` module loaded and imports its module alone.
`__main__` modules are entry points (`python -m`), run rather than imported: left out.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {folder: f"latentmix.{folder}" for folder in ("service", "worker", "client")}

# Runs in the subprocess: argv[1] is a JSON object {"preload": [...], "modules": [...]}; prints
# a JSON object {module: error} of the modules that failed to import alone.
FORK_EACH = r"""
import importlib, json, os, sys, traceback
plan = json.loads(sys.argv[1])
for name, attributes in plan["preload"]:
    try:  # the attributes too: diffusers and transformers load their classes lazily
        module = importlib.import_module(name)
        for attribute in attributes:
            getattr(module, attribute, None)
    except Exception:
        pass  # optional extras: the child reports it if a module needs it
assert not [m for m in sys.modules if m.startswith("latentmix.")], "preloaded latentmix"
failures = {}
for module in plan["modules"]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            message = b""
        except BaseException:
            message = traceback.format_exc(limit=-3).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if error or status:
        failures[module] = error or f"child exited with status {status}"
print(json.dumps(failures))
"""


def package_modules() -> list[str]:
    """The dotted name of every module under service/, worker/ and client/."""
    names = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join((package, *parts)))
    return names


def third_party_imports() -> list[tuple[str, list[str]]]:
    """(module, names imported from it) of each library import in the package (preloaded
    once, so the children do not load torch or diffusers' pipelines again)."""
    found: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        found.setdefault(alias.name, set())
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.setdefault(node.module, set()).update(a.name for a in node.names)
    own = ("latentmix", "__future__")
    return sorted((m, sorted(n)) for m, n in found.items() if m.split(".")[0] not in own)


def test_the_module_list_covers_the_package():
    modules = package_modules()
    assert "latentmix.worker.engine.inversion" in modules
    assert "latentmix.service.core.contract" in modules
    assert "latentmix.client" in modules
    assert len(modules) > 100


def test_every_module_imports_alone_in_a_fresh_interpreter():
    plan = {"preload": third_party_imports(), "modules": package_modules()}
    run = subprocess.run(
        [sys.executable, "-c", FORK_EACH, json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    failures = json.loads(run.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{m}:\n{e}" for m, e in failures.items())
