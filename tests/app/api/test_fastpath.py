"""The fast path answers exactly as FastAPI does, and leaves it what it does not handle."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.fastpath import FastPath, hot_route
from app.api.routes import predict, sessions
from app.main import create_app
from app.schemas.predict import NextWordRequest
from app.schemas.sessions import SessionNextWordRequest
from tests.app.conftest import make_settings

GOLDEN_STORE = Path(__file__).parents[1] / "golden" / "store"

CASES = [
    {"text": "one , two ,", "top_k": 7},
    {"text": "ONE,two", "model": "gru-custom"},
    {"text": "one eleventy"},
    {"text": ""},
    {"text": "one", "top_k": 0},
    {"text": "one", "top_k": 41},
    {"text": "one", "model": "nope"},
    {"text": "one " * 3000},
    {"text": 5},
    {"txt": "one"},
]


@pytest.fixture
def both(store):
    with (
        TestClient(create_app(make_settings(store, FAST_PATH=True))) as fast,
        TestClient(create_app(make_settings(store, FAST_PATH=False))) as slow,
    ):
        yield fast, slow


def same(a, b):
    assert (a.status_code, a.content) == (b.status_code, b.content)
    assert a.headers["content-type"] == b.headers["content-type"]
    assert a.headers.get("retry-after") == b.headers.get("retry-after")


@pytest.mark.parametrize("body", CASES)
def test_next_word_byte_for_byte(both, body):
    fast, slow = both
    same(fast.post("/v1/next-word", json=body), slow.post("/v1/next-word", json=body))


@pytest.mark.parametrize("body", [c for c in CASES if "model" not in c])
def test_session_next_word_same_answers(both, body):
    fast, slow = both
    a = fast.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
    b = slow.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
    ra = fast.post(f"/v1/sessions/{a}/next-word", json=body)
    rb = slow.post(f"/v1/sessions/{b}/next-word", json=body)
    assert ra.status_code == rb.status_code
    ja, jb = ra.json(), rb.json()
    for j, sid in ((ja, a), (jb, b)):
        if "session_id" in j:
            assert j.pop("session_id") == sid
            j.pop("created_at"), j.pop("expires_at")
    assert ja == jb


def test_unknown_session_and_odd_paths(both):
    fast, slow = both
    for path in (
        "/v1/sessions/nope/next-word",
        "/v1/sessions//next-word",
        "/v1/sessions/a/b/next-word",
    ):
        same(fast.post(path, json={"text": "one"}), slow.post(path, json={"text": "one"}))


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1]", b'{"text": "one", "top_k": 3, "top_k": 4}']
)
def test_raw_bodies(both, raw):
    fast, slow = both
    h = {"content-type": "application/json"}
    same(
        fast.post("/v1/next-word", content=raw, headers=h),
        slow.post("/v1/next-word", content=raw, headers=h),
    )


def test_other_content_types_go_to_fastapi(both):
    fast, slow = both
    h = {"content-type": "text/plain"}
    raw = b'{"text": "one"}'
    same(
        fast.post("/v1/next-word", content=raw, headers=h),
        slow.post("/v1/next-word", content=raw, headers=h),
    )


def test_a_huge_body_is_refused_before_either_path(both):
    fast, slow = both
    body = {"text": "one " * 300_000}  # 1.2 MB: past MAX_BODY_BYTES
    a, b = fast.post("/v1/next-word", json=body), slow.post("/v1/next-word", json=body)
    same(a, b)
    assert a.status_code == 413 and "MAX_BODY_BYTES" in a.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/vnd.api+json",
        " application/json ",
        "application/jsonx",
        "application/json/x",
        "application/x/y+json",
        "application/x-www-form-urlencoded",
        "text/json",
        "",
    ],
)
def test_the_content_types_fastapi_reads_as_json_and_no_others(both, content_type):
    fast, slow = both
    raw = b'{"text": "one"}'
    h = {"content-type": content_type}
    a = fast.post("/v1/next-word", content=raw, headers=h)
    same(a, slow.post("/v1/next-word", content=raw, headers=h))
    sid_a = fast.post("/v1/sessions", json={"text": "one"}).json()["session_id"]
    sid_b = slow.post("/v1/sessions", json={"text": "one"}).json()["session_id"]
    ra = fast.post(f"/v1/sessions/{sid_a}/next-word", content=raw, headers=h)
    rb = slow.post(f"/v1/sessions/{sid_b}/next-word", content=raw, headers=h)
    assert ra.status_code == rb.status_code


def test_fast_path_requests_are_counted_by_route(both):
    fast, _ = both
    fast.post("/v1/next-word", json={"text": "one"})
    sid = fast.post("/v1/sessions", json={}).json()["session_id"]
    fast.post(f"/v1/sessions/{sid}/next-word", json={"text": "eleventy"})
    text = fast.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/next-word",status="200"} 1.0' in text
    assert (
        'http_requests_total{method="POST",route="/v1/sessions/{session_id}/next-word",'
        'status="422"} 1.0'
    ) in text


def test_the_fast_path_serves_the_routes_marked_hot_as_declared():
    """Its table is read from the app's own routes: their templates, body models and
    endpoints; a route it could not serve as FastAPI does is refused when it is built."""
    app = create_app(make_settings(GOLDEN_STORE, FAST_PATH=True))
    fast = FastPath(app.router, app)
    routes = [*fast.fixed.values(), *fast.templated]
    assert {r.route.path for r in routes} == {
        "/v1/next-word",
        "/v1/sessions/{session_id}/next-word",
    }
    assert {r.model for r in routes} == {NextWordRequest, SessionNextWordRequest}
    assert {r.endpoint for r in routes} == {predict.predict_next_word, sessions.session_next_word}
    (listing,) = [r for r in sessions.router.routes if r.endpoint is sessions.list_sessions]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="cannot serve /v1/sessions"):
        hot_route(listing)
