"""The Studio page and the landing page: served from the package, every asset they load is
the API's own (no CDN), and they are public when the API needs keys (they hold no data)."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from fastapi.testclient import TestClient

from latentmix.service.api.studio import STATIC_DIR

KEYS = ["studio-key-0123456789abcdef"]
CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html"}


def page_assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def module_imports(script: str) -> list[str]:
    return re.findall(r"""^import .* from ["']([^"']+)["'];$""", script, flags=re.MULTILINE)


def test_studio_page_and_every_script_it_imports_are_served(client: TestClient):
    page = client.get("/studio")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    base = "http://testserver/studio"
    pending = [urljoin(base, url) for url in page_assets(page.text) if not url.startswith("data:")]
    loaded: set[str] = set()
    while pending:
        url = pending.pop()
        if url in loaded:
            continue
        path = urlsplit(url).path
        if path == "/docs":
            continue  # the API docs link (tests/service/api/test_docs.py)
        asset = client.get(path)
        assert asset.status_code == 200, url
        kind = path.rsplit(".", 1)[-1]
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[kind]), url
        loaded.add(url)
        if kind == "js":
            pending += [urljoin(url, name) for name in module_imports(asset.text)]
    names = {url.rsplit("/", 1)[-1] for url in loaded}
    assert names >= {"studio.js", "studio.css", "api.js", "zip.js", "latent_preview.js"}


def test_no_studio_file_names_another_host():
    for asset in STATIC_DIR.iterdir():
        text = asset.read_text()
        assert not re.search(r"https?://", text), asset.name
        assert "cdn" not in text.lower(), asset.name


def test_the_landing_page_links_to_the_studio_and_the_docs(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200
    assert {"/studio", "/docs", "/redoc", "/openapi.json"} <= set(page_assets(page.text))


def test_with_keys_the_pages_are_public_and_the_api_is_not(make_client):
    client = make_client(api_keys=KEYS)
    for path in ("/", "/studio", "/studio/static/studio.js", "/studio/static/index.html"):
        assert client.get(path).status_code == 200, path
    for path in ("/studioX", "/openapi.json", "/models", "/docs"):
        assert client.get(path).status_code == 401, path


def test_the_studio_stays_out_of_the_schema(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/studio")]
