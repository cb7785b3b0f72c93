"""The pages people look at: Swagger UI and ReDoc from packaged assets (no CDN), and the
playground at `/`, a static client of the public API. None of them is in the OpenAPI schema."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

# fastapi-offline ships swagger-ui-dist's bundle and CSS, ReDoc's standalone bundle and a favicon
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
PLAYGROUND = Path(__file__).parent / "static"
DOCS_ASSETS_URL = "/assets/docs"
PLAYGROUND_URL = "/assets/playground"
DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL = "/docs", "/redoc", "/docs/oauth2-redirect"
DOCS_PATHS = (DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL)  # the pages that read /openapi.json
SWAGGER_UI_PARAMETERS = {
    "persistAuthorization": True,  # a key entered with Authorize survives a reload
    "displayRequestDuration": True,
    "validatorUrl": None,  # no badge fetched from swagger.io
}

# The pages load nothing from elsewhere, and the browser holds them to it: ReDoc's bundle
# shows Redocly's logo from a CDN (it hides itself when blocked), and a stray asset URL would
# fail at once here rather than only on an offline machine.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; font-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "  # FastAPI's inline init
    "worker-src 'self' blob:; connect-src 'self'; base-uri 'self'; frame-ancestors 'self'"
)
PLAYGROUND_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)

router = APIRouter(include_in_schema=False)


def _locked(page: HTMLResponse, csp: str = DOCS_CSP) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = csp
    return page


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(DOCS_URL, response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    return _locked(
        get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
        )
    )


@router.get(OAUTH2_REDIRECT_URL, response_class=HTMLResponse)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return _locked(get_swagger_ui_oauth2_redirect_html())


@router.get(REDOC_URL, response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    return _locked(
        get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
    )


@router.get("/", response_class=FileResponse)
async def playground() -> FileResponse:
    return FileResponse(
        PLAYGROUND / "index.html", headers={"Content-Security-Policy": PLAYGROUND_CSP}
    )


class Assets(StaticFiles):
    """Static files that name their mount as the route, for the request metrics' label."""

    def __init__(self, url: str, directory: Path):
        super().__init__(directory=directory)
        self.route = SimpleNamespace(path=f"{url}/{{file}}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        await super().__call__(scope, receive, send)


def install_pages(app: FastAPI) -> None:
    """Serve the pages and their assets. The app must be built with `docs_url=None,
    redoc_url=None` (FastAPI's own pages load their assets from a CDN)."""
    assert app.docs_url is None and app.redoc_url is None, "FastAPI's CDN pages are on"
    app.mount(DOCS_ASSETS_URL, Assets(DOCS_ASSETS_URL, DOCS_ASSETS), name="docs-assets")
    app.mount(PLAYGROUND_URL, Assets(PLAYGROUND_URL, PLAYGROUND), name="playground-assets")
    app.include_router(router)
