"""Swagger UI and ReDoc in a real Chromium, offline: every operation rendered, and requests
executed through "Try it out" (every route, and a Server-Sent Events stream)."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Browser, Page, expect

from tests.app.pages.browser import OfflineGuard

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def operations(api) -> set[tuple[str, str]]:
    paths = api.get("/openapi.json").json()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() for m in ops if m in METHODS}


def open_operation(page: Page, method: str, path: str):
    block = page.locator(f".opblock-{method.lower()}").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]')
    )
    block.locator(".opblock-summary-control").click()
    block.get_by_role("button", name="Try it out").click()
    # Execute comes in the same render as the editable parameters: once it shows, a count() of
    # a parameter's input is not taken too early.
    expect(block.get_by_role("button", name="Execute")).to_be_visible()
    return block


def test_swagger_ui_renders_every_operation(page: Page, api):
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Human Numbers")
    page.wait_for_selector(".opblock")
    shown = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(b => [
            b.querySelector('.opblock-summary-method').textContent.trim(),
            b.querySelector('.opblock-summary-path').dataset.path])""",
    )
    assert len(shown) == len(set(map(tuple, shown)))
    assert {tuple(op) for op in shown} == operations(api)


def test_swagger_ui_streams_a_continuation(page: Page, api):
    page.goto("/docs")
    block = open_operation(page, "POST", "/v1/continuation")
    request = {"text": "one, two, three,", "max_words": 3, "stream": True}
    block.locator("textarea.body-param__text").fill(json.dumps(request))
    block.get_by_role("button", name="Execute").click()
    expect(block.locator(".live-responses-table tbody .response-col_status").first).to_have_text(
        "200"
    )
    body = block.locator(".live-responses-table tbody .response-col_description pre").first
    expect(body).to_contain_text("finish_reason")
    events = [json.loads(line[5:]) for line in body.inner_text().splitlines() if line.strip()]
    whole = api.post("/v1/continuation", json={**request, "stream": False}).json()
    assert [e["word"] for e in events[:-1]] == whole["words"]
    assert events[-1] == {"finish_reason": whole["finish_reason"]}


def test_redoc_renders_every_operation(page: Page, api):
    page.goto("/redoc")
    expect(page.locator("h1")).to_contain_text("Human Numbers next-word service")
    page.wait_for_selector('[data-section-id^="operation/"]')
    shown = page.eval_on_selector_all(
        '[data-section-id^="operation/"]',
        """sections => sections.map(s => {
            const verb = s.querySelector('.http-verb');
            return [verb.textContent.trim().toUpperCase(), verb.nextElementSibling.textContent];
        })""",
    )
    assert len(shown) == len(set(map(tuple, shown)))
    assert {tuple(op) for op in shown} == operations(api)


def test_the_offline_guard_sees_a_request_to_elsewhere(browser: Browser):
    """So that `page`'s "no request left this machine" is not true by construction."""
    guard = OfflineGuard()
    context = guard.attach(browser.new_context())
    page = context.new_page()
    failed = page.evaluate("() => fetch('https://example.com/x').then(() => false, () => true)")
    context.close()
    assert failed and guard.blocked == ["https://example.com/x"]


def test_swagger_ui_try_it_out_works_for_every_route(page: Page, api):
    """Each operation executed from the page with its documented example: a 2xx answer."""
    sid = api.post("/v1/sessions", json={"text": "one, two,"}).json()["session_id"]
    model = api.get("/v1/models").json()["default"]
    params = {"session_id": sid, "name": model}
    page.goto("/docs")
    page.wait_for_selector(".opblock")
    # the session is deleted last
    for method, path in sorted(operations(api), key=lambda op: (op[0] == "DELETE", op)):
        block = open_operation(page, method, path)
        for name, value in params.items():
            field = block.locator(f'tr[data-param-name="{name}"] input')
            if field.count():
                field.fill(value)
        block.get_by_role("button", name="Execute").click()
        status = block.locator(".live-responses-table tbody .response-col_status").first
        expect(status).to_have_text(re.compile(r"^2\d\d$"), timeout=5_000)
        if (method, path) == ("GET", "/v1/models"):
            body = block.locator(".live-responses-table tbody .response-col_description pre")
            assert json.loads(body.first.inner_text()) == api.get("/v1/models").json()
        block.locator(".opblock-summary-control").click()  # fold it: a long page renders slowly
    assert api.get(f"/v1/sessions/{sid}").status_code == 404
