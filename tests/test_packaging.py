"""The wheel installs one top-level package, `latentmix`, with every folder of the source
tree in it, the `latentmix` command and its contributed commands; the client imports
without the server's or the worker's dependencies."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel, and what building it printed (pip -v shows setuptools' warnings)."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    return next(out.glob("latentmix-*.whl")), build.stdout + build.stderr


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, str]) -> Path:
    return built[0]


def test_the_build_is_quiet_about_package_data(built: tuple[Path, str]):
    """A data folder not listed in `packages` costs ~50 lines of warnings per install."""
    assert "Package would be ignored" not in built[1]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
    )
    return target


def test_every_source_folder_is_a_listed_package():
    folders = {
        "latentmix." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in ("service", "worker", "client")
        for init in (ROOT / folder).rglob("__init__.py")
    }
    data = set(PYPROJECT["tool"]["setuptools"]["package-data"])
    assert folders == set(PYPROJECT["tool"]["setuptools"]["packages"]) - data


def test_the_wheel_holds_one_top_level_package(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith("top_level.txt"))
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
        assert archive.read(top_level).decode().split() == ["latentmix"]
    code = {name.split("/")[0] for name in names if name.endswith(".py")}
    assert code == {"latentmix"}
    assert "latentmix = latentmix.service.cli.main:main" in entry_points.decode()
    assert "augment = latentmix.client.augment:add_parser" in entry_points.decode()


def run_python(code: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a Python that sees only the installed wheel (and the standard library
    plus this venv's packages), run outside the source tree."""
    return subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("folder", ["service", "worker", "client"])
def test_after_an_install_the_folders_are_not_packages(installed: Path, tmp_path: Path, folder):
    result = run_python(f"import {folder}", installed, tmp_path)
    assert "No module named" in result.stderr, result.stderr


def test_the_client_imports_without_fastapi_torch_or_diffusers(installed: Path, tmp_path: Path):
    blocked = ("fastapi", "torch", "diffusers", "uvicorn", "transformers")
    code = (
        "import importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        f"    def find_spec(self, name, *_):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from latentmix.client import LatentMixClient\n"
        "import latentmix.client.augment\n"
        "print(LatentMixClient.__module__)\n"
    )
    result = run_python(code.replace("\n", "\n"), installed, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "latentmix.client.api"


def test_the_wheel_ships_the_trained_shapes_weights(wheel: Path):
    """`LATENTMIX_MODEL=shapes` works from an install: the pipeline folder and the classifier
    are package data."""
    prefix = "latentmix/worker/engine/shapes/weights/"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n.removeprefix(prefix) for n in archive.namelist() if n.startswith(prefix)}
    assert {
        "classifier.safetensors",
        "pipeline/model_index.json",
        "pipeline/unet/diffusion_pytorch_model.safetensors",
        "pipeline/vae/diffusion_pytorch_model.safetensors",
        "pipeline/text_encoder/model.safetensors",
        "pipeline/tokenizer/tokenizer.json",
        "pipeline/scheduler/scheduler_config.json",
    } <= shipped


def test_the_wheel_holds_the_studio_page(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    static = "latentmix/service/api/studio/static/"
    assert {static + name for name in ("index.html", "studio.js", "studio.css", "zip.js")} <= names
