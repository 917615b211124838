"""The import rules that keep the layers one-way, read from the source (no imports run):

- `service/core/` is the torch-free ground floor both processes share: it imports neither
  `latentmix.worker`, the HTTP app (`latentmix.service.api`) nor the command line
  (`latentmix.service.cli`);
- `service/api/` (the HTTP process) never imports the worker or the command line;
- `service/cli/` (the `latentmix` command and launcher) starts the API and the workers as
  processes, by module name: it imports neither;
- `worker/` imports of the service only its core: never the HTTP app or the command line;
- the engine (`worker/engine/`) is a library: of the service it imports only the core;
- model families (`worker/engine/families/`) never import the inversion methods (the model
  loader, which knows both, puts the methods on the card): no cycle between them;
- the test-model builders (`worker/engine/testing/`) are reached by production code through
  one registry line in `worker/engine/models.py` only (tests and the offline shapes training
  import them directly);
- training code (`worker/training/`) is imported by nothing else in the package: the
  serving worker never loads it;
- `client/` talks HTTP only: it imports neither the service nor the worker;
- everything imports the package by its installed name, `latentmix.*`, never the folders.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("service", "worker", "client")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`, relative imports made absolute."""
    tree = ast.parse(path.read_text(), str(path))
    package = "latentmix." + ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}".rstrip(".")
            found.append((node.lineno, module))
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]


def test_the_service_package_has_only_its_three_layers():
    loose = sorted(p.name for p in (ROOT / "service").glob("*.py") if p.name != "__init__.py")
    assert loose == []


def test_the_core_imports_neither_the_worker_the_api_nor_the_command_line():
    core = sources("service/core")
    assert core, "no service/core sources found"
    forbidden = ("latentmix.worker", "latentmix.service.api", "latentmix.service.cli")
    assert violations(core, forbidden) == []


def test_the_api_imports_neither_the_worker_nor_the_command_line():
    forbidden = ("latentmix.worker", "latentmix.service.cli")
    assert violations(sources("service/api"), forbidden) == []


def test_the_command_line_starts_the_api_and_workers_as_processes_never_imports_them():
    forbidden = ("latentmix.worker", "latentmix.service.api")
    assert violations(sources("service/cli"), forbidden) == []


def test_the_worker_imports_only_the_core_of_the_service():
    forbidden = ("latentmix.service.api", "latentmix.service.cli")
    assert violations(sources("worker"), forbidden) == []


def test_the_engine_imports_of_the_service_only_its_core():
    forbidden = ("latentmix.service.api", "latentmix.service.cli", "latentmix.worker.tasks")
    assert violations(sources("worker/engine"), forbidden) == []


def test_families_never_import_the_inversion_methods():
    families = sources("worker/engine/families")
    assert families, "no families found"
    assert violations(families, ("latentmix.worker.engine.inversion",)) == []


def test_production_code_reaches_the_test_model_builders_through_one_registry_line():
    testing = "latentmix.worker.engine.testing"
    production = [
        path
        for path in sources("worker") + sources("service") + sources("client")
        if path.relative_to(ROOT).parts[:3] != ("worker", "engine", "testing")
        and path.relative_to(ROOT).parts[1] != "training"
    ]
    found = violations(production, (testing,))
    assert len(found) == 1, found
    assert found[0].startswith("worker/engine/models.py:")


def test_nothing_outside_training_imports_the_training_code():
    serving = [p for p in sources("worker") if p.relative_to(ROOT).parts[1] != "training"]
    files = serving + sources("service") + sources("client")
    assert violations(files, ("latentmix.worker.training",)) == []


def test_the_client_imports_only_itself_of_latentmix():
    assert violations(sources("client"), ("latentmix.service", "latentmix.worker")) == []


@pytest.mark.parametrize("folder", [*FOLDERS, "tests", "bench"])
def test_code_imports_the_installed_namespace_never_the_folders(folder: str):
    assert violations(sources(folder), FOLDERS) == []


def test_the_rule_catches_a_reintroduced_worker_import(tmp_path: Path, monkeypatch):
    fake_root = tmp_path
    (fake_root / "service").mkdir()
    bad = fake_root / "service" / "bad.py"
    bad.write_text("from worker.engine import mix\nfrom latentmix.worker.tasks import mix\n")
    monkeypatch.setattr(f"{__name__}.ROOT", fake_root)

    found = violations([bad], ("latentmix.worker", *FOLDERS))

    assert found == [
        "service/bad.py:1 imports worker.engine",
        "service/bad.py:2 imports latentmix.worker.tasks",
    ]


def private_imports(files: list[Path]) -> list[str]:
    """`from latentmix.x import _name`: a module reaching for another one's private helper."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latentmix"):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_imports_another_modules_private_helpers(folder: str):
    """A helper two modules need is public in the module both import (tasks: `streaming`,
    `reporting`), never one module's private reached into by another."""
    assert private_imports(sources(folder)) == []


def test_tasks_import_only_the_shared_task_modules():
    """A task module imports `reporting` and `streaming`, never another job type's task."""
    shared = ("reporting", "streaming")
    tasks = sources("worker/tasks")
    others = tuple(
        f"latentmix.worker.tasks.{p.stem}" for p in tasks if p.stem not in (*shared, "__init__")
    )
    assert violations(tasks, others) == []


def test_a_route_module_imports_no_other_route_module():
    """Routes share helpers through service/api modules (job_views, uploads, ...) and the
    planning modules of service/core, never through another route's module."""
    routes = [p for p in sources("service/api/routes") if p.stem != "__init__"]
    for path in routes:
        others = tuple(f"latentmix.service.api.routes.{p.stem}" for p in routes if p != path)
        assert violations([path], others) == []
