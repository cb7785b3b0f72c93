import json
import re
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings

TEXT = "one thousand one hundred one , one thousand one hundred two , one thousand"


def new(client, **body):
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_create_empty_session(client):
    s = new(client)
    assert s["model"] == "gru" and s["tokens_seen"] == 0 and s["next"] == []
    assert s["last_words"] == []
    assert len(s["session_id"]) >= 22  # 128 random bits, url-safe
    assert s["expires_at"] > s["created_at"]
    # a session that saw nothing has no distribution yet, and says so
    r = client.post(f"/v1/sessions/{s['session_id']}/next-word", json={"text": ""})
    assert r.status_code == 200 and r.json()["next"] == []


def test_create_with_text_and_model(client):
    s = new(client, model="gru-custom", text="one , two ,", top_k=3)
    assert s["model"] == "gru-custom" and s["tokens_seen"] == 4 and len(s["next"]) == 3
    whole = client.post(
        "/v1/next-word", json={"text": "one , two ,", "model": "gru-custom", "top_k": 3}
    ).json()
    assert [w["word"] for w in s["next"]] == [w["word"] for w in whole["next"]]


def test_ids_are_unguessable_and_distinct(client):
    ids = {new(client)["session_id"] for _ in range(20)}
    assert len(ids) == 20


def test_get_list_delete(client):
    a, b = new(client, text="one"), new(client, model="gru-cell")
    got = client.get(f"/v1/sessions/{a['session_id']}").json()
    assert got["tokens_seen"] == 1 and got["last_words"] == ["one"] and got["model"] == "gru"
    listed = client.get("/v1/sessions").json()["sessions"]
    assert {s["session_id"] for s in listed} == {a["session_id"], b["session_id"]}
    r = client.delete(f"/v1/sessions/{a['session_id']}")
    assert r.status_code == 204 and r.content == b""
    for method, path, body in [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/next-word", {"text": "one"}),
        ("POST", "/reset", {}),
        ("POST", "/continuation", {"text": "one"}),
    ]:
        r = client.request(method, f"/v1/sessions/{a['session_id']}{path}", json=body)
        assert r.status_code == 404, (method, path)
        assert "no session" in r.json()["detail"]
    assert [s["session_id"] for s in client.get("/v1/sessions").json()["sessions"]] == [
        b["session_id"]
    ]


def test_feeding_pieces_and_last_words(client):
    sid = new(client)["session_id"]
    words = TEXT.split()
    for w in words:
        r = client.post(f"/v1/sessions/{sid}/next-word", json={"text": w, "top_k": 40})
        assert r.status_code == 200
        assert r.json()["tokens"] == [w]
    body = r.json()
    assert body["tokens_seen"] == len(words)
    assert body["last_words"] == words[-10:]
    whole = client.post("/v1/next-word", json={"text": TEXT, "top_k": 40}).json()
    assert [w["word"] for w in body["next"]] == [w["word"] for w in whole["next"]]
    for mine, ref in zip(body["next"], whole["next"], strict=True):
        assert mine["prob"] == pytest.approx(ref["prob"], abs=1e-5)
    # an empty text feeds nothing and returns the same distribution
    again = client.post(f"/v1/sessions/{sid}/next-word", json={"text": "", "top_k": 40}).json()
    assert again["tokens_seen"] == len(words) and again["next"] == body["next"]


def test_reset(client):
    sid = new(client, text="one , two")["session_id"]
    r = client.post(f"/v1/sessions/{sid}/reset")
    assert r.status_code == 200 and r.json()["tokens_seen"] == 0 and r.json()["last_words"] == []
    after = client.post(f"/v1/sessions/{sid}/next-word", json={"text": "seven"}).json()
    fresh = client.post("/v1/next-word", json={"text": "seven"}).json()
    assert after["next"] == fresh["next"] and after["tokens_seen"] == 1


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"text": "one eleventy"}, 422, "unknown word 'eleventy' at position 1"),
        ({"text": "one", "top_k": 0}, 422, "greater than or equal to 1"),
        ({"text": "one", "top_k": 41}, 422, "less than or equal to 40"),
        ({"text": "one " * 3000}, 413, "MAX_TEXT_CHARS"),
        ({"text": 3}, 422, "valid string"),
        ({"text": "one", "model": "gru"}, 422, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_request_changes_nothing(client, body, status, detail):
    s = new(client, text="one , two ,", top_k=40)
    sid = s["session_id"]
    r = client.post(f"/v1/sessions/{sid}/next-word", json=body)
    assert r.status_code == status and detail in json.dumps(r.json()["detail"])
    r = client.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 1, **body})
    assert r.status_code in (status, 422)
    after = client.post(f"/v1/sessions/{sid}/next-word", json={"text": "", "top_k": 40}).json()
    assert after["tokens_seen"] == 4 and after["next"] == s["next"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"model": "lstm"}, 404, "no model 'lstm'"),
        ({"text": "one eleventy"}, 422, "unknown word 'eleventy'"),
        ({"top_k": 0}, 422, "greater than or equal to 1"),
    ],
)
def test_a_bad_create_creates_nothing(client, body, status, detail):
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == status and detail in json.dumps(r.json()["detail"])
    assert client.get("/v1/sessions").json()["sessions"] == []


def test_continuation_advances_the_session(client):
    sid = new(client, text=TEXT)["session_id"]
    r = client.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 6})
    assert r.status_code == 200
    body = r.json()
    assert body["session_id"] == sid and len(body["words"]) == 6
    assert body["tokens_seen"] == len(TEXT.split()) + 6
    stateless = client.post("/v1/continuation", json={"text": TEXT, "max_words": 6}).json()
    assert body["words"] == stateless["words"]
    # the session now stands after the generated words: it continues where they left off
    nxt = client.post(f"/v1/sessions/{sid}/next-word", json={"text": ""}).json()
    ref = client.post("/v1/next-word", json={"text": TEXT + " " + " ".join(body["words"])}).json()
    assert [w["word"] for w in nxt["next"]] == [w["word"] for w in ref["next"]]
    assert nxt["last_words"] == (TEXT.split() + body["words"])[-10:]


def test_continuation_with_text_and_stop(client):
    sid = new(client)["session_id"]
    r = client.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 5})
    assert r.status_code == 422
    assert r.json()["detail"] == "the session has seen no word yet: give a text to continue from"
    body = client.post(
        f"/v1/sessions/{sid}/continuation", json={"text": TEXT, "max_words": 20, "stop": [","]}
    ).json()
    assert body["finish_reason"] == "stop" and "," not in body["words"]
    # the stop word is neither returned nor fed
    assert body["tokens_seen"] == len(TEXT.split()) + len(body["words"])


def test_session_stream(client):
    sid = new(client, text=TEXT)["session_id"]
    with client.stream(
        "POST", f"/v1/sessions/{sid}/continuation", json={"max_words": 4, "stream": True}
    ) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.read().decode().splitlines() if ln.startswith("data:")]
    events = [json.loads(ln[5:]) for ln in lines]
    assert len(events) == 5 and events[-1] == {"finish_reason": "length"}
    got = client.get(f"/v1/sessions/{sid}").json()
    assert got["tokens_seen"] == len(TEXT.split()) + 4
    assert got["last_words"][-4:] == [e["word"] for e in events[:-1]]
    r = client.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 999, "stream": True})
    assert r.status_code == 422 and "max_words is 999" in r.json()["detail"]


def test_ttl_expiry(store, backend):
    with TestClient(create_app(make_settings(store, SESSION_TTL_SECONDS=1.0, **backend))) as c:
        kept, dropped = new(c, text="one")["session_id"], new(c, text="two")["session_id"]
        for _ in range(3):  # use one session more often than its TTL: it stays
            time.sleep(0.45)
            assert c.post(f"/v1/sessions/{kept}/next-word", json={"text": "one"}).status_code == 200
        r = c.get(f"/v1/sessions/{dropped}")
        assert r.status_code == 404 and "expired" in r.json()["detail"]
        assert [s["session_id"] for s in c.get("/v1/sessions").json()["sessions"]] == [kept]
        time.sleep(1.1)
        assert c.get("/v1/sessions").json()["sessions"] == []
        assert not re.search(r'sessions_live\{model="gru"\} [1-9]', c.get("/metrics").text)


def test_cap_rejects_by_default(store, backend):
    with TestClient(create_app(make_settings(store, MAX_SESSIONS=2, **backend))) as c:
        new(c), new(c)
        r = c.post("/v1/sessions", json={})
        assert r.status_code == 429
        assert r.json()["detail"].startswith("the server holds its maximum of 2 sessions")
        assert r.headers["retry-after"] == "60"
        assert len(c.get("/v1/sessions").json()["sessions"]) == 2


def test_cap_can_evict_the_least_recently_used(store, backend):
    settings = make_settings(store, MAX_SESSIONS=2, SESSION_CAP_POLICY="evict", **backend)
    with TestClient(create_app(settings)) as c:
        a = new(c, text="one")["session_id"]
        time.sleep(0.01)
        b = new(c)["session_id"]
        time.sleep(0.01)
        c.post(f"/v1/sessions/{a}/next-word", json={"text": "two"})  # b is now the oldest
        d = new(c, text="three")["session_id"]
        assert c.get(f"/v1/sessions/{b}").status_code == 404
        assert c.get(f"/v1/sessions/{a}").json()["tokens_seen"] == 2
        # the evicted session's slot went to the new one, which starts from zero
        fresh = c.post("/v1/next-word", json={"text": "three"}).json()
        assert (
            c.post(f"/v1/sessions/{d}/next-word", json={"text": ""}).json()["next"] == fresh["next"]
        )
