"""Per-process state has one owner, read from the source (no imports run): the worker's
state lives on its context (worker/runtime.py `WorkerContext`), the API's in its app state
(service/api/app.py), and the engine takes what it needs as arguments. So no module under
`service/` or `worker/` keeps a thread pool in a module or class attribute, or caches a
function's result for the process with `functools.cache` / `lru_cache` (a loaded model
kept by whoever called first)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOLS = {"ThreadPoolExecutor", "ProcessPoolExecutor", "ThreadPool", "Pool"}
CACHES = {"cache", "lru_cache"}
# The settings read from the environment once per process: no model, nothing to own.
ALLOWED_CACHES = {("service/core/config.py", "get_settings")}


def sources() -> list[Path]:
    return sorted(p for folder in ("service", "worker") for p in (ROOT / folder).rglob("*.py"))


def called_name(node: ast.AST) -> str | None:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else None


def shared_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run once for the module or class, not per call."""
    found = []
    for statement in body:
        if isinstance(statement, ast.ClassDef):
            found += shared_statements(statement.body)
        elif not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(statement)
    return found


def pools_at_import(tree: ast.Module) -> list[int]:
    """Lines where a module or class body creates a pool."""
    return [
        node.lineno
        for statement in shared_statements(tree.body)
        for node in ast.walk(statement)
        if isinstance(node, ast.Call) and called_name(node) in POOLS
    ]


def cached_functions(tree: ast.Module) -> list[str]:
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(called_name(d) in CACHES for d in node.decorator_list)
    ]


def parsed(path: Path) -> tuple[str, ast.Module]:
    return path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def test_the_sources_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in sources()}
    assert {"worker/runtime.py", "service/core/storage.py", "service/api/app.py"} <= names


def test_no_module_or_class_holds_a_thread_pool():
    found = [
        f"{name}:{line}" for name, tree in map(parsed, sources()) for line in pools_at_import(tree)
    ]
    assert found == []


def test_no_function_result_is_cached_for_the_process():
    found = [
        (name, function)
        for name, tree in map(parsed, sources())
        for function in cached_functions(tree)
        if (name, function) not in ALLOWED_CACHES
    ]
    assert found == []


def test_the_checks_catch_what_they_forbid():
    """The same checks on a module written the old way find both kinds."""
    tree = ast.parse(
        "import functools\nfrom concurrent.futures import ThreadPoolExecutor\n"
        "POOL = ThreadPoolExecutor(max_workers=8)\n"
        "class Holder:\n    pool = ThreadPoolExecutor(1)\n"
        "    def fine(self):\n        return ThreadPoolExecutor(1)\n"
        "@functools.lru_cache(maxsize=2)\ndef load_clip(name): ...\n"
        "@functools.cache\ndef worker_cache(mb): ...\n"
    )
    assert pools_at_import(tree) == [3, 5]
    assert cached_functions(tree) == ["load_clip", "worker_cache"]
