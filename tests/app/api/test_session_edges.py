"""Reproductions of the smaller findings: the session list was one unbounded page, a create
refused by a full queue left an orphan session, and a stream whose client left went on
generating into the session."""

import asyncio

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings, run_app

PROMPT = "one , two , three ,"


def new(client, **body):
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def test_the_list_comes_in_pages(client):
    ids = sorted(new(client) for _ in range(7))
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        r = client.get("/v1/sessions", params=params)
        assert r.status_code == 200
        body = r.json()
        assert len(body["sessions"]) <= 3
        seen += [s["session_id"] for s in body["sessions"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    whole = client.get("/v1/sessions").json()  # default limit 100
    assert [s["session_id"] for s in whole["sessions"]] == ids and whole["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": 1001}, "less than or equal to 1000"),
        ({"cursor": "%%%"}, "is not one this server gave"),
    ],
)
def test_bad_page_parameters_are_a_422(client, params, detail):
    r = client.get("/v1/sessions", params=params)
    assert r.status_code == 422 and detail in str(r.json()["detail"])


def test_a_create_refused_by_a_full_queue_leaves_no_session(store, backend):
    """MAX_QUEUE=1: of many creates with a text at once, some get 429 from the engine's
    queue; each of those must leave nothing behind."""
    app = create_app(make_settings(store, MAX_QUEUE=1, **backend))

    async def scenario(c: httpx.AsyncClient) -> list[int]:
        rs = await asyncio.gather(
            *(c.post("/v1/sessions", json={"text": PROMPT}) for _ in range(16))
        )
        listed = (await c.get("/v1/sessions")).json()["sessions"]
        made = [r.json()["session_id"] for r in rs if r.status_code == 201]
        assert sorted(s["session_id"] for s in listed) == sorted(made)
        return [r.status_code for r in rs]

    statuses = run_app(app, scenario)
    assert 429 in statuses and 201 in statuses and set(statuses) == {201, 429}


def word_of(e: dict) -> str:
    """The word of a continuation event, or of a completion chunk (that has no finish yet)."""
    if "choices" in e:
        assert e["choices"][0]["finish_reason"] is None, e
        return e["choices"][0]["text"].strip()
    return e["word"]


async def drive_stream(app, path: str, body: dict, keep: int) -> list[str]:
    """POST a streaming request straight through ASGI; after `keep` word events the client
    disconnects. Each send takes a few ms, so the generation runs ahead of what was sent. The
    words the server handed over (its send returned), in order."""
    got: list[bytes] = []
    enough = asyncio.Event()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            await asyncio.sleep(0.005)  # a slow link: the engine goes on meanwhile
            got.append(message.get("body", b""))
            if sum(c.count(b"data: ") for c in got) >= keep:
                enough.set()

    sent_body = False

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 30)
    lines = [line[6:] for c in got for line in c.split(b"\n") if line]
    assert b"[DONE]" not in lines
    events = [orjson.loads(line) for line in lines]
    assert all("finish_reason" not in e for e in events), events  # it was cut short
    return [word_of(e) for e in events]


@pytest.mark.parametrize("route", ["continuation", "completions"])
def test_a_stream_the_client_leaves_stops_and_keeps_exactly_the_words_sent(store, backend, route):
    """Both stream routes, the session's own and OpenAI's with a session_id."""
    app = create_app(make_settings(store, MAX_WORDS=20_000, **backend))

    async def scenario(c: httpx.AsyncClient) -> None:
        sid = (await c.post("/v1/sessions", json={"text": PROMPT})).json()["session_id"]
        if route == "continuation":
            path, body = f"/v1/sessions/{sid}/continuation", {"max_words": 20_000}
        else:
            path, body = "/v1/completions", {"prompt": "", "session_id": sid, "max_tokens": 20_000}
        words = await drive_stream(app, path, body | {"stream": True}, keep=3)
        assert 3 <= len(words) < 20_000
        # free at once (no 1.8 s of words nobody reads), holding the words sent and no more
        r = await asyncio.wait_for(c.get(f"/v1/sessions/{sid}"), 2)
        got = r.json()
        assert got["tokens_seen"] == len(PROMPT.split()) + len(words)
        assert got["last_words"] == (PROMPT.split() + words)[-10:]
        r = await asyncio.wait_for(c.post(f"/v1/sessions/{sid}/next-word", json={"text": ""}), 2)
        assert r.status_code == 200
        # the state is that of the prompt and those words, fed whole from the start state
        whole = await c.post(
            "/v1/next-word", json={"text": " ".join(PROMPT.split() + words), "top_k": 5}
        )
        mine = {w["word"]: w["prob"] for w in r.json()["next"]}
        ref = {w["word"]: w["prob"] for w in whole.json()["next"]}
        assert mine.keys() == ref.keys()
        for w in mine:
            assert mine[w] == pytest.approx(ref[w], abs=1e-5)

    run_app(app, scenario)


def test_a_stream_read_to_its_end_keeps_every_word(store, backend):
    with TestClient(create_app(make_settings(store, **backend))) as c:
        sid = new(c, text=PROMPT)
        with c.stream(
            "POST", f"/v1/sessions/{sid}/continuation", json={"max_words": 8, "stream": True}
        ) as r:
            events = [orjson.loads(line[6:]) for line in r.iter_lines() if line]
        words = [e["word"] for e in events[:-1]]
        assert len(words) == 8 and events[-1] == {"finish_reason": "length"}
        got = c.get(f"/v1/sessions/{sid}").json()
        assert got["tokens_seen"] == len(PROMPT.split()) + 8
        assert got["last_words"] == (PROMPT.split() + words)[-10:]
