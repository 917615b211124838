"""Interactive API docs (`/docs`: Swagger UI, `/redoc`: ReDoc) served with their assets from
the package, so they work offline and never load a CDN.

The JavaScript, CSS and favicon come from the `fastapi-offline` package (MIT; it bundles
Swagger UI, Apache-2.0, and ReDoc, MIT): only its static files are used, served under
`/docs/static/`. FastAPI's own docs routes are turned off (`docs_url=None, redoc_url=None`)
and these take their place; like every path but the health probes, they need an API key when
keys are configured.
"""

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/docs/static"
STATIC_DIR = files("fastapi_offline") / "static"
REDOC_IMAGES_POLICY = "img-src 'self' data:"


def install(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect page, /redoc and their assets on `app` (created with
    `docs_url=None, redoc_url=None`)."""
    app.mount(STATIC_URL, StaticFiles(directory=str(STATIC_DIR)), name="docs-static")

    def urls(request: Request) -> tuple[str, str, str]:
        root = request.scope.get("root_path", "")
        return root, f"{root}{app.openapi_url}", f"{root}{STATIC_URL}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root, openapi_url, static = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(app.swagger_ui_oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        _, openapi_url, static = urls(request)
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )
        # The ReDoc bundle's side menu always shows Redocly's logo from their CDN (hidden when
        # it fails to load): the browser is told not to fetch images from anywhere else.
        page.headers["Content-Security-Policy"] = REDOC_IMAGES_POLICY
        return page
