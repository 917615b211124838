"""/docs and /redoc work offline: every asset they load is served by the API itself."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


def loaded_urls(html: str) -> list[str]:
    """What a browser fetches for the page: src/href attributes and the schema URLs the
    page's script passes to Swagger UI (`url: '...'`) or ReDoc (`spec-url="..."`)."""
    return re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl:\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_assets_served_by_the_api(client: TestClient, page: str):
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = [a or b for a, b in loaded_urls(response.text)]
    assert len(urls) >= 3  # script, favicon, schema (Swagger UI: the stylesheet too)
    assert "cdn" not in response.text and "fonts.googleapis" not in response.text
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = "." + parts.path.rsplit(".", 1)[-1]
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], url
        assert len(asset.content) > 1000, url


def test_swagger_ui_loads_its_stylesheet_and_script(client: TestClient):
    urls = [a or b for a, b in loaded_urls(client.get("/docs").text)]
    assert {u.rsplit("/", 1)[-1] for u in urls} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "openapi.json",
    }


def test_swagger_ui_oauth2_redirect_page_is_served(client: TestClient):
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "oauth2" in response.text


def test_docs_assets_stay_out_of_the_schema(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


def test_redoc_may_load_images_only_from_the_api(client: TestClient):
    """Its bundle links Redocly's logo on their CDN; the page's policy keeps the browser off it
    (tests/e2e/test_studio_browser.py sees the request blocked in Chromium)."""
    policy = client.get("/redoc").headers["content-security-policy"]
    assert policy == "img-src 'self' data:"
