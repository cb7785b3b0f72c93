"""Debian's Chromium driven by Playwright, offline: the tests' browser and the screenshots'.

Playwright's own browser downloads are never used (`playwright install` needs the internet):
it drives the system's `chromium` package over CDP. Every request a page makes goes through
`OfflineGuard`, which lets loopback requests through and fails and records any other, so a
test can assert that a page rendered without the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Playwright, Route

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# no sandbox (CI runs as root), and none of Chromium's own calls home
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--metrics-recording-only",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def missing_chromium() -> str | None:
    """Why the browser cannot start, or None."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return None
    found = shutil.which("chromium")
    return (
        f"no Chromium at {CHROMIUM}"
        + (f" (there is one at {found}: set CHROMIUM={found})" if found else "")
        + ": the browser tests drive Debian's package: apt-get install -y chromium"
        " (.ci/run installs it)"
    )


def launch(playwright: Playwright) -> Browser:
    if why := missing_chromium():
        raise RuntimeError(why)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


class OfflineGuard:
    """Routes every request of a context: loopback goes on, anything else fails and is kept
    in `blocked`."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def attach(self, context: BrowserContext) -> BrowserContext:
        context.route("**/*", self._route)
        return context

    def _route(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")
