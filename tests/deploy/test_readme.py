"""The commands of the README and the documentation pages (docs/), read as a new user runs
them: what they write stays out of git, and scripts fed to the system `python3` use only
the standard library."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks(language: str) -> list[str]:
    return [
        block
        for page in PAGES
        for block in re.findall(
            rf"^```{language}\n(.*?)^```",
            page.read_text(encoding="utf-8"),
            flags=re.DOTALL | re.MULTILINE,
        )
    ]


def written_paths() -> list[str]:
    """Files and folders the walkthroughs create: shell redirections, `-o`, `--out`,
    `mkdir -p`, and the client's `download(job, "folder")`."""
    paths: list[str] = []
    for block in code_blocks("bash"):
        block = re.sub(r"<<'?EOF'?.*?^EOF$", "", block, flags=re.DOTALL | re.MULTILINE)
        block = re.sub(r"(^|\s)#.*$", "", block, flags=re.MULTILINE)  # comments: "0 -> 1"
        paths += re.findall(r"(?<![<2&])>\s*([\w./-]+)", block)
        paths += re.findall(r"\s(?:-o|--out|mkdir -p)\s+([\w./-]+)", block)
    for block in code_blocks("python"):
        paths += re.findall(r"download\(\w+,\s*\"([^\"]+)\"", block)
        paths += re.findall(r"Path\(\"([^\"]+)\"\)", block)
    return paths


def test_the_walkthroughs_write_only_where_git_ignores():
    paths = written_paths()
    assert any(path.endswith("mixed.png") for path in paths)  # the parser sees the walkthrough
    tracked_or_visible = [
        path
        for path in paths
        if not path.startswith("/dev/")
        and subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, check=False
        ).returncode
        != 0
    ]
    assert tracked_or_visible == []


def test_scripts_run_by_the_system_python_use_only_the_standard_library():
    """`python3 - <<EOF` runs outside the venv: a third-party import there fails."""
    scripts = re.findall(
        r"^python3 -[^\n]*<<'?EOF'?[^\n]*\n(.*?)^EOF$",
        "\n".join(code_blocks("bash")),
        flags=re.DOTALL | re.MULTILINE,
    )
    imported = {
        name.split(".")[0]
        for script in scripts
        for name in re.findall(r"^\s*(?:from|import)\s+([\w.]+)", script, flags=re.MULTILINE)
    }
    assert imported - set(sys.stdlib_module_names) == set()
