"""The playground as a test reads it: the API calls it makes, the tokens its session has been
fed, its bars, and what the service says the bars should be."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, expect


def tokens(text: str) -> list[str]:
    return text.replace(",", " , ").split()


class Calls:
    """The API calls the page makes: (method, path, JSON body, headers)."""

    def __init__(self, page: Page):
        self.seen: list[tuple[str, str, Any, dict[str, str]]] = []
        page.on("request", self._record)

    def _record(self, r: Request) -> None:
        path = r.url.split("//", 1)[1].split("/", 1)[1]
        if path.startswith("v1/"):
            body = json.loads(r.post_data) if r.post_data else None
            self.seen.append((r.method, "/" + path, body, r.headers))

    def to(self, suffix: str) -> list[Any]:
        return [body for method, path, body, _ in self.seen if path.endswith(suffix)]


def wait_fed(page: Page, text: str) -> None:
    """Until the page's session has been fed exactly the tokens of `text`."""
    expect(page.locator("#playground")).to_have_attribute("data-fed", " ".join(tokens(text)))
    expect(page.locator("#status")).to_contain_text(f": {len(tokens(text))} tokens seen")


def bars(page: Page) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "#bars .bar",
        """bars => bars.map(b => ({
            word: b.querySelector('.word').textContent,
            prob: Number(b.dataset.prob),
            shown: b.querySelector('.prob').textContent,
            height: b.querySelector('.fill').getBoundingClientRect().height,
            track: b.querySelector('.track').clientHeight,
        }))""",
    )


def expected_next(api: httpx.Client, model: str, text: str, top_k: int) -> list[dict[str, Any]]:
    """What the service says for `text`, asked through a session of its own."""
    sid = api.post("/v1/sessions", json={"model": model}).json()["session_id"]
    r = api.post(f"/v1/sessions/{sid}/next-word", json={"text": text, "top_k": top_k})
    api.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    return r.json()["next"]


def assert_bars_match(page: Page, api: httpx.Client, text: str) -> None:
    model = page.locator("#model").input_value()
    top_k = int(page.locator("#top-k").input_value())
    want = expected_next(api, model, text, top_k)
    got = bars(page)
    assert [b["word"] for b in got] == [w["word"] for w in want]
    for b, w in zip(got, want, strict=True):
        assert b["prob"] == pytest.approx(w["prob"], abs=1e-6)
        # the bar's drawn height is its probability of the track's, to a pixel
        assert b["height"] == pytest.approx(w["prob"] * b["track"], abs=1.0)
        assert b["shown"].endswith("%")
