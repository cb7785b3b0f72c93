"""A live `python -m app` and one headless Chromium per test module, offline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from launchers import AppProcess
from tests.app.pages.browser import OfflineGuard, launch, missing_chromium


@pytest.fixture(scope="session")
def live_server(store: Path) -> Iterator[AppProcess]:
    # with a signing key, as a deployment that offers session snapshots: every route answers
    server = AppProcess(
        store, ACCESS_LOG="false", STATE_SIGNING_KEY="pages-test-signing-key-0123456789"
    ).start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def api(live_server: AppProcess) -> Iterator[httpx.Client]:
    with live_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if why := missing_chromium():
        pytest.fail(why, pytrace=False)  # CI installs it: never a silent skip
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@contextmanager
def guarded_page(browser: Browser, base: str) -> Iterator[Page]:
    """A fresh page on the server at `base`; fails if it asked for anything off this machine,
    or if its JavaScript threw (or broke its Content-Security-Policy)."""
    guard = OfflineGuard()
    context = guard.attach(browser.new_context(base_url=base))
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: csp_violation(m.text) and errors.append(m.text))
    yield page
    context.close()
    assert guard.blocked == [], f"requests left this machine: {guard.blocked}"
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
def page(browser: Browser, live_server: AppProcess) -> Iterator[Page]:
    """A fresh page on the live server (`guarded_page`)."""
    with guarded_page(browser, live_server.base) as page:
        yield page


@pytest.fixture
def playground(page: Page) -> Page:
    """The playground, once its start-up calls are over (its first session exists)."""
    page.goto("/")
    expect(page.locator("#model")).to_be_enabled()
    expect(page.locator("#playground")).to_have_attribute("data-session-id", re.compile("."))
    return page


def csp_violation(message: str) -> bool:
    """The page tried something its Content-Security-Policy refused: an asset from elsewhere,
    an inline script... Only ReDoc's "API docs by Redocly" logo is expected (app/pages)."""
    return "Content Security Policy" in message and REDOCLY_LOGO not in message


REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
