"""The pages as HTTP resources: served by the app itself, assets from the installed package,
nothing from elsewhere, and none of them in the OpenAPI schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes import health, models, predict, sessions
from app.main import create_app
from app.pages import DOCS_ASSETS, PLAYGROUND
from tests.app.conftest import make_settings

PAGES = {"/", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store))) as c:
        yield c


def urls_in(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?'([^']+)'""", html)


def test_docs_page_loads_its_assets_from_the_app(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html and "https://" not in html, "an asset from elsewhere"
    for url in ("/assets/docs/swagger-ui-bundle.js", "/assets/docs/swagger-ui.css"):
        assert f'"{url}"' in html
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100_000
    assert "'/openapi.json'" in html
    assert '"persistAuthorization": true' in html
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_redoc_page_loads_its_bundle_from_the_app(client):
    r = client.get("/redoc")
    assert r.status_code == 200
    assert "http://" not in r.text and "https://" not in r.text
    assert 'src="/assets/docs/redoc.standalone.js"' in r.text
    js = client.get("/assets/docs/redoc.standalone.js")
    assert js.status_code == 200 and b"Redoc" in js.content[:2000]
    assert "img-src 'self' data:" in r.headers["content-security-policy"]


def test_oauth2_redirect_page(client):
    r = client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "swaggerUIRedirectOauth2" in r.text


def test_playground_is_the_root_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>Human Numbers playground</title>" in r.text
    assert "http://" not in r.text and "https://" not in r.text
    assert "script-src 'self';" in r.headers["content-security-policy"]
    for name in ("playground.js", "playground.css"):
        asset = client.get(f"/assets/playground/{name}")
        assert asset.status_code == 200
        assert asset.content == (PLAYGROUND / name).read_bytes()
        assert b"http://" not in asset.content and b"https://" not in asset.content


def test_assets_come_from_the_installed_package():
    assert {p.name for p in DOCS_ASSETS.iterdir()} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "redoc.standalone.js",
        "favicon.png",
    }
    assert "site-packages" in str(DOCS_ASSETS) or "fastapi_offline" in str(DOCS_ASSETS)


def test_a_missing_asset_is_a_404(client):
    assert client.get("/assets/docs/nope.js").status_code == 404
    assert client.get("/assets/playground/../../main.py").status_code == 404


def test_assets_are_counted_by_their_mount(client):
    client.get("/assets/playground/playground.css")
    metrics = client.get("/metrics").text
    assert 'route="/assets/playground/{file}",status="200"' in metrics


def test_the_pages_are_not_in_the_openapi_schema(client):
    paths = set(client.get("/openapi.json").json()["paths"])
    assert not paths & PAGES
    assert not [p for p in paths if p.startswith("/assets")]
    api = {r.path for m in (health, models, predict, sessions) for r in m.router.routes}  # type: ignore[attr-defined]
    assert api <= paths and "/v1/sessions/{session_id}/next-word" in api
