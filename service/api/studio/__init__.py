"""The Studio (`/studio`): a web page to upload, mix, sample and morph latents, written in
plain HTML, CSS and JavaScript (no build step, nothing loaded from a CDN), served from the
package. `/` links to it and to the API docs.

The page and its assets hold no data, so they are public like the health probes: with API
keys configured the page loads, asks for a key, and sends it as the bearer header of every
API call it makes (security.PUBLIC_PREFIXES).
"""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STUDIO_URL = "/studio"
STATIC_URL = "/studio/static"
STATIC_DIR = files("latentmix.service.api.studio") / "static"

LANDING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LatentMix</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>LatentMix</h1>
<p>Invert images into diffusion noise latents, mix them without degeneracies, generate images.</p>
<ul>
<li><a href="/studio">Studio</a>: drop images, mix, sample and morph in the browser</li>
<li><a href="/docs">API docs</a> (Swagger UI) and <a href="/redoc">ReDoc</a></li>
<li><a href="/openapi.json">OpenAPI schema</a></li>
</ul></body></html>
"""


def install(app: FastAPI) -> None:
    """Serve `/` (links), `/studio` (the page) and `/studio/static/*` (its scripts and styles)."""
    app.mount(STATIC_URL, StaticFiles(directory=str(STATIC_DIR)), name="studio-static")

    @app.get("/", include_in_schema=False)
    async def landing() -> HTMLResponse:
        return HTMLResponse(LANDING_PAGE)

    @app.get(STUDIO_URL, include_in_schema=False)
    async def studio() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")
