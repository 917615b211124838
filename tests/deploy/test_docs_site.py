"""The documentation site (mkdocs.yml, docs/) builds offline with warnings as errors, every
page is in the nav, and the README, its front door, stays short with links that resolve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 250


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mkdocs build --strict`: a broken link, a missing anchor or image, or a page left out
    of the nav is a warning, and strict makes it fail the build."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    assert "WARNING" not in build.stderr, build.stderr[-4000:]
    return out


def nav_pages(entries: list) -> Iterator[str]:
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from nav_pages(value)
        else:
            yield value


def test_every_docs_page_is_in_the_nav_once():
    """Except the pages named in `not_in_nav`: slots for pages other changes are adding,
    linked once they land."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = list(nav_pages(config["nav"]))
    pending = {line.strip().lstrip("/") for line in config.get("not_in_nav", "").splitlines()}
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    pages.add("reference.md")  # written at build time (scripts/docs_api_reference.py)
    assert sorted(nav) == sorted(pages - pending)
    assert len(set(nav)) == len(nav)
    assert not pending & set(nav), "a linked page is still listed in not_in_nav"


class _Collector(HTMLParser):
    """ids of a page, and the external addresses it loads (scripts, styles, images)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.loaded: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        address = values.get("src") if tag in ("script", "img") else None
        if tag == "link" and "stylesheet" in (values.get("rel") or ""):
            address = values.get("href")
        if address:
            self.loaded.append(address)


def collect(html: Path) -> _Collector:
    collector = _Collector()
    collector.feed(html.read_text(encoding="utf-8"))
    return collector


def test_the_site_builds_and_loads_nothing_from_another_host(site: Path):
    pages = list(site.rglob("*.html"))
    assert (site / "index.html").exists() and (site / "methods/mixing/index.html").exists()
    external = {
        address
        for page in pages
        for address in collect(page).loaded
        if urlsplit(address).scheme or address.startswith("//")
    }
    assert external == set()  # no fonts, scripts or styles from a CDN: it reads offline


def test_math_is_left_as_tex_for_the_page(site: Path):
    """pymdownx.arithmatex (generic) keeps the formulas as \\(...\\) / \\[...\\] text."""
    html = (site / "methods/mixing/index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in html and r"\sqrt{d}" in html


def test_the_api_reference_lists_every_endpoint_of_the_committed_schema(site: Path):
    openapi = json.loads((ROOT / "openapi/openapi.json").read_text(encoding="utf-8"))
    html = unescape((site / "reference/index.html").read_text(encoding="utf-8"))
    for path, operations in openapi["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in html
    for name in openapi["components"]["schemas"]:
        assert f'id="schema-{name}"' in html


def named_paths(text: str) -> list[str]:
    """Repository paths a page names in backticks (`service/core/config.py`, `bench/`)."""
    top = {path.name for path in ROOT.iterdir()} - {"data"}
    return [
        token.split("::")[0].rstrip(",.;:")  # a test's node id names its file
        for token in re.findall(r"`([^`\s]+/[^`\s]*)`", text)
        if token.split("/")[0] in top
    ]


def layout_paths(text: str) -> list[str]:
    """The files and folders of architecture.md's layout tree (two spaces per level; deeper
    indented lines continue a description)."""
    tree = re.search(r"^```\nservice/\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert tree, "architecture.md: the layout tree starting with service/ is gone"
    folders: list[str] = ["service"]
    paths = []
    for line in tree.group(1).splitlines():
        indent = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0].rstrip(",") if line.strip() else ""
        if indent > 4 or not re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", name):
            continue  # a description's second line
        folders = folders[:indent]
        paths.append("/".join([*folders, name]))
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return paths


def test_the_paths_the_docs_name_exist():
    """Files move (service/*.py went to service/core/, ...): a page naming an old path fails."""
    stale = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in [README, *DOCS.rglob("*.md")]
        for path in named_paths(page.read_text(encoding="utf-8"))
        if not list(ROOT.glob(path.rstrip("/")))
    ]
    layout = layout_paths((DOCS / "architecture.md").read_text(encoding="utf-8"))
    assert "service/core/config.py" in layout and "worker/engine/mixing.py" in layout
    stale += [f"docs/architecture.md: {path}" for path in layout if not (ROOT / path).exists()]
    assert stale == []


def readme_targets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<img[^>]*src=\"([^\"]+)\"", text)


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    targets = readme_targets()
    assert any(t.endswith(".png") for t in targets)  # a picture
    assert "docs/getting-started.md" in targets and "docs/api.md" in targets


def test_readme_links_and_images_resolve(site: Path):
    """Relative links and images point at committed files (as GitHub renders them), and a
    link into a docs page names a heading that page has."""
    for target in readme_targets():
        parts = urlsplit(target)
        if parts.scheme:
            continue
        path = ROOT / unquote(parts.path)
        assert path.exists(), f"README links to {target}, which does not exist"
        if parts.fragment and path.suffix == ".md":
            assert path.is_relative_to(DOCS), f"README links to a heading outside docs/: {target}"
            page = path.relative_to(DOCS).with_suffix("")
            html = site / ("" if page.name == "index" else page) / "index.html"
            assert parts.fragment in collect(html).ids, f"README: no heading #{parts.fragment}"
