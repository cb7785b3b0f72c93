"""The README's pictures: the playground at `/` (bars and a streamed continuation) and Swagger
UI at `/docs`, taken by Debian's headless Chromium from a live `python -m app`, offline.

    python -m scripts.screenshots                  # trains the default model (a minute or two)
    python -m scripts.screenshots --store store    # or uses a store you have
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from launchers import AppProcess
from tests.app.pages.browser import OfflineGuard, launch

TEXT = "one, two, three, four,"  # the playground's placeholder: the first thing a user types
WIDTH = 1100


def playground(page: Page, out: Path) -> None:
    page.goto("/")
    expect(page.locator("#playground")).to_have_attribute("data-session-id", re.compile("."))
    page.locator("#text").press_sequentially(TEXT, delay=5)
    fed = " ".join(TEXT.replace(",", " , ").split())  # the tokens, as the page keeps them
    expect(page.locator("#playground")).to_have_attribute("data-fed", fed)
    page.locator("#max-words").fill("12")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#finish")).not_to_be_empty()
    expect(page.locator("#playground")).to_have_attribute("data-streaming", "false")
    page.wait_for_timeout(300)  # the bars after the continuation
    page.locator("#text").blur()
    page.screenshot(path=out / "playground.png", full_page=True)


def swagger(page: Page, out: Path) -> None:
    page.goto("/docs")
    page.wait_for_selector(".opblock")
    expect(page.locator(".swagger-ui .info .title")).to_be_visible()
    schemas = page.locator(".swagger-ui section.models").bounding_box()
    assert schemas is not None
    height = schemas["y"] + page.evaluate("() => window.scrollY")  # the operations, not the schemas
    clip = {"x": 0, "y": 0, "width": WIDTH, "height": height}
    page.screenshot(path=out / "swagger.png", full_page=True, clip=clip)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--store", type=Path, help="model store (default: train gru-copy into a temp one)"
    )
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "store"
            cmd = [sys.executable, "-m", "training", "train", "--variant", "gru-copy"]
            subprocess.run([*cmd, "--store", str(store), "--no-progress"], check=True)
        server = AppProcess(store, ACCESS_LOG="false").start()
        try:
            with sync_playwright() as pw:
                browser = launch(pw)
                guard = OfflineGuard()
                context = guard.attach(
                    browser.new_context(
                        base_url=server.base,
                        viewport={"width": WIDTH, "height": 900},
                        color_scheme="light",
                    )
                )
                page = context.new_page()
                playground(page, args.out)
                swagger(page, args.out)
                browser.close()
        finally:
            server.kill()
    if guard.blocked:
        print(f"requests left this machine: {guard.blocked}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'playground.png'} and {args.out / 'swagger.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
