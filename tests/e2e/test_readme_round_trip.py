"""The README's curl round trip, run as written (bash, curl, the system `python3`, `file`)
against the session's service: two images inverted, mixed, the first image downloaded. The
Getting started page shows the same commands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
README_ADDRESS = "API=http://127.0.0.1:8000\n"


def walkthrough(page: Path) -> str:
    blocks = re.findall(
        r"^```bash\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE
    )
    [block] = [block for block in blocks if "data/try/mixed.png" in block]
    return block


def test_the_getting_started_page_shows_the_readmes_round_trip():
    assert walkthrough(ROOT / "docs/getting-started.md") == walkthrough(ROOT / "README.md")


@pytest.mark.e2e
def test_the_readmes_round_trip_gives_a_mixed_image(service_url: str, tmp_path: Path):
    script = walkthrough(ROOT / "README.md")
    assert script.startswith(README_ADDRESS)
    script = f"API={service_url}\n" + script.removeprefix(README_ADDRESS)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # run from a repository root
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "succeeded"  # step 2: the inversion's status
    assert "PNG image data" in run.stdout  # step 4: `file` on the download
    mix = (tmp_path / "data/try/mix.json").read_text()
    assert '"weights":[0.5,0.5]' in mix.replace(" ", "")  # the centroid is planned first
    with Image.open(tmp_path / "data/try/mixed.png") as image:
        assert image.format == "PNG" and image.size == (64, 64)  # the tiny model's default
