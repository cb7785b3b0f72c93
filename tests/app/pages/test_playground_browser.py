"""The playground at `/` in a real Chromium, offline, against the live service: its bars are
the session's next-word distribution, it feeds a session only what is new, it streams a
continuation, and it shows the service's errors."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.app.pages.playground_page import (
    Calls,
    assert_bars_match,
    tokens,
    wait_fed,
)

TEXT = "one thousand two hundred three, one thousand two hundred four,"


def test_models_listed_with_the_default_chosen(playground: Page, api):
    listed = api.get("/v1/models").json()
    values = playground.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert values == [m["name"] for m in listed["models"]]
    assert playground.locator("#model").input_value() == listed["default"]


def test_bars_follow_the_text_and_only_new_words_are_sent(playground: Page, api):
    calls = Calls(playground)
    box = playground.locator("#text")
    box.press_sequentially("one, two,", delay=10)
    wait_fed(playground, "one, two,")
    assert_bars_match(playground, api, "one, two,")

    box.press_sequentially(" three,", delay=10)
    wait_fed(playground, "one, two, three,")
    assert_bars_match(playground, api, "one, two, three,")
    fed = [tokens(b["text"]) for b in calls.to("/next-word")]
    assert fed[-1] == ["three", ","]  # only what is new
    assert [t for f in fed for t in f] == tokens("one, two, three,")  # each word once
    assert calls.to("/reset") == []

    box.fill("one, five, three,")  # an earlier word changed: reset, then the whole text
    wait_fed(playground, "one, five, three,")
    assert len(calls.to("/reset")) == 1
    assert tokens(calls.to("/next-word")[-1]["text"]) == tokens("one, five, three,")
    assert_bars_match(playground, api, "one, five, three,")

    playground.locator("#top-k").fill("4")
    expect(playground.locator("#bars .bar")).to_have_count(4)
    assert_bars_match(playground, api, "one, five, three,")


def test_a_word_being_typed_waits_and_its_bars_stand_out(playground: Page, api):
    box = playground.locator("#text")
    box.press_sequentially("one, two, thir", delay=10)
    wait_fed(playground, "one, two,")
    assert_bars_match(playground, api, "one, two,")
    for bar in playground.locator("#bars .bar.match").all():
        assert bar.get_attribute("data-word").startswith("thir")
    expect(playground.locator("#error")).to_be_hidden()


def test_continue_streams_words_with_their_probabilities(playground: Page, api):
    responses: list[str] = []
    playground.on(
        "response",
        lambda r: r.url.endswith("/continuation") and responses.append(r.headers["content-type"]),
    )
    playground.locator("#text").press_sequentially(TEXT, delay=2)
    wait_fed(playground, TEXT)
    playground.locator("#max-words").fill("8")
    playground.get_by_role("button", name="Continue").click()
    expect(playground.locator("#finish")).to_have_text("Reached the word limit.")

    model = playground.locator("#model").input_value()
    whole = api.post("/v1/continuation", json={"text": TEXT, "model": model, "max_words": 8}).json()
    words = playground.eval_on_selector_all(
        "#continuation .gen",
        """ws => ws.map(w => ({
            word: w.firstChild.textContent,
            prob: Number(w.dataset.prob),
            p: Number(w.style.getPropertyValue('--p')),
            background: getComputedStyle(w).backgroundColor,
        }))""",
    )
    assert [w["word"] for w in words] == whole["words"]
    for w, p in zip(words, whole["probs"], strict=True):
        assert w["prob"] == pytest.approx(p, abs=1e-6) and w["p"] == pytest.approx(p, abs=1e-6)
    # a likelier word is shaded darker
    alphas = [float(w["background"].rstrip(")").rsplit(",", 1)[-1]) for w in words]
    by_prob = sorted(zip([w["prob"] for w in words], alphas, strict=True))
    assert by_prob[0][1] < by_prob[-1][1]
    assert responses and all(t.startswith("text/event-stream") for t in responses)

    # the words went into the text, and the session and the bars are where they left off
    text = playground.locator("#text").input_value()
    assert tokens(text) == tokens(TEXT) + whole["words"]
    wait_fed(playground, text)
    assert_bars_match(playground, api, text)


def test_an_unknown_word_shows_the_service_error_and_loses_nothing(playground: Page, api):
    box = playground.locator("#text")
    box.press_sequentially("one,", delay=10)
    wait_fed(playground, "one,")
    box.press_sequentially(" twoo,", delay=10)
    error = playground.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Error 422:")
    expect(error).to_contain_text("'twoo'")
    # the service's own message, word for word (for the new words the page sent)
    sid = api.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
    detail = api.post(f"/v1/sessions/{sid}/next-word", json={"text": "twoo ,"}).json()["detail"]
    assert error.inner_text() == f"Error 422: {detail}"

    box.fill("one, two,")  # fixed: the session was kept as it was
    expect(error).to_be_hidden()
    wait_fed(playground, "one, two,")
    assert_bars_match(playground, api, "one, two,")


def test_reset_starts_over(playground: Page):
    calls = Calls(playground)
    playground.locator("#text").press_sequentially("one, two,", delay=10)
    wait_fed(playground, "one, two,")
    playground.get_by_role("button", name="Reset").click()
    expect(playground.locator("#status")).to_contain_text(": 0 tokens seen")
    expect(playground.locator("#text")).to_have_value("")
    expect(playground.locator("#bars .bar")).to_have_count(0)
    assert len(calls.to("/reset")) == 1


def test_the_api_key_is_sent_and_kept_in_the_page_only(playground: Page):
    calls = Calls(playground)
    playground.get_by_label("API key").fill("k-123")
    playground.get_by_label("API key").press("Enter")
    playground.get_by_label("API key").blur()
    playground.locator("#text").press_sequentially("one,", delay=10)
    wait_fed(playground, "one,")
    sent = [h.get("authorization") for _, _, _, h in calls.seen]
    assert sent and all(a == "Bearer k-123" for a in sent)
    stored = playground.evaluate(
        "() => JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie])"
    )
    assert "k-123" not in stored


def test_another_model_gets_a_session_of_its_own(playground: Page, api):
    calls = Calls(playground)
    playground.locator("#text").press_sequentially("one, two,", delay=10)
    wait_fed(playground, "one, two,")
    first = playground.locator("#playground").get_attribute("data-session-id")
    other = next(m["name"] for m in api.get("/v1/models").json()["models"] if not m["default"])
    playground.locator("#model").select_option(other)
    expect(playground.locator("#status")).to_contain_text(f"on {other}: 4 tokens seen")
    assert calls.to("/v1/sessions")[-1]["model"] == other
    assert [p for m, p, _, _ in calls.seen if m == "DELETE"] == [f"/v1/sessions/{first}"]
    assert api.get(f"/v1/sessions/{first}").status_code == 404
    assert_bars_match(playground, api, "one, two,")


def test_labelled_and_fits_a_phone(page: Page):
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto("/")
    expect(page.locator("#model")).to_be_enabled()
    unlabelled = page.eval_on_selector_all(
        "input, select, textarea, button",
        "els => els.filter(e => !(e.labels?.length || e.textContent.trim())).map(e => e.id)",
    )
    assert unlabelled == []
    page.locator("#text").press_sequentially("one, two,", delay=10)
    wait_fed(page, "one, two,")
    # the page does not scroll sideways (the bars scroll within their own box)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
