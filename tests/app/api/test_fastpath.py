"""The fast path answers exactly as FastAPI does, and leaves it what it does not handle."""

import asyncio
import re
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from app.api.fastpath import FastPath, hot_route
from app.api.routes import completions, health, predict, sessions, tokenize
from app.core.config import Settings
from app.main import create_app
from app.schemas.openai import CompletionRequest
from app.schemas.predict import ContinuationRequest, NextWordRequest
from app.schemas.sessions import SessionContinuationRequest, SessionNextWordRequest
from app.schemas.tokenize import DetokenizeRequest, TokenizeRequest
from tests.app.conftest import make_settings

GOLDEN_STORE = Path(__file__).parents[1] / "golden" / "store"
KEYS = Settings(API_KEYS="key-one-0123456789abcdef").API_KEYS

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
    assert (
        'http_requests_total{method="POST",route="/v1/next-word",status="200",'
        'version="gru-copy@1"} 1.0'
    ) in text
    assert (
        'http_requests_total{method="POST",route="/v1/sessions/{session_id}/next-word",'
        'status="422",version="gru-copy@1"} 1.0'
    ) in text


def test_the_fast_path_serves_the_routes_marked_hot_as_declared():
    """Its table is read from the app's own routes: their templates, body models and
    endpoints; a route it could not serve as FastAPI does is refused when it is built."""
    app = create_app(make_settings(GOLDEN_STORE, FAST_PATH=True))
    fast = FastPath(app.router, app)
    routes = {r.path: r for r in [*fast.fixed.values(), *fast.templated]}
    assert set(routes) == set(HOT_ROUTES) | set(HOT_GETS)
    assert {p for p, r in routes.items() if r.method == "GET"} == set(HOT_GETS)
    assert {p for p, r in routes.items() if not r.keyed} == set(HOT_GETS)  # no key asked
    assert {r.model for r in routes.values()} == {
        None,
        NextWordRequest,
        SessionNextWordRequest,
        ContinuationRequest,
        SessionContinuationRequest,
        CompletionRequest,
        TokenizeRequest,
        DetokenizeRequest,
    }
    assert {r.endpoint for r in routes.values()} == {
        health.get_health,
        health.get_ready,
        predict.predict_next_word,
        predict.create_continuation,
        sessions.session_next_word,
        sessions.session_continuation,
        completions.create_completion,
        tokenize.tokenize_text,
        tokenize.detokenize_ids,
    }
    assert [p for p, r in routes.items() if r.openai] == ["/v1/completions"]
    assert not routes["/v1/next-word"].streams and routes["/v1/continuation"].streams
    (listing,) = [r for r in sessions.router.routes if r.endpoint is sessions.list_sessions]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="cannot serve /v1/sessions"):
        hot_route(listing)


# -- every hot route, keys on and off: answers, errors and headers equal FastAPI's -----------
KEY = "key-one-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
# (an answer, a 404, a domain error, a body that fails validation, a stream) per hot route
HOT_ROUTES = {
    "/v1/next-word": [{"text": "one ,", "top_k": 3}, {"text": "one", "model": "nope"},
                      {"text": "one eleventy"}, {"txt": "one"}],
    "/v1/sessions/{session_id}/next-word": [{"text": "two ,", "top_k": 2}, "nope",
                                            {"text": "eleventy"}, {"text": 5}],
    "/v1/continuation": [{"text": "one ,", "max_words": 3}, {"text": "one", "model": "nope"},
                         {"text": "eleventy"}, {"text": "one", "max_words": -1},
                         {"text": "one ,", "max_words": 2, "stream": True}],
    "/v1/sessions/{session_id}/continuation": [{"max_words": 2}, "nope", {"text": "eleventy"},
                                               {"max_words": "x"},
                                               {"max_words": 2, "stream": True}],
    "/v1/completions": [{"prompt": "one ,", "max_tokens": 3, "temperature": 0},
                        {"prompt": "one", "model": "nope"},
                        {"prompt": "one eleventy"}, {"prompt": "one", "bogus": 1},
                        {"prompt": "one ,", "max_tokens": 2, "temperature": 0, "stream": True}],
    "/v1/tokenize": [{"prompt": "one eleventy ,", "return_token_strs": True},
                     {"prompt": "one", "model": "nope"}, {"prompt": 5}],
    "/v1/detokenize": [{"tokens": [12, 9]}, {"tokens": [12], "model": "nope"},
                       {"tokens": [12, 99]}, {"tokens": ["x"]}],
}  # fmt: skip
HOT_GETS = ("/health", "/ready")
VOLATILE = re.compile(rb'"(created_at|expires_at|id)":"[^"]*"|"created":\d+')


def scenario(c, template: str, auth: dict[str, str]) -> list[tuple[str, dict[str, object]]]:
    """The same requests to one app: what each answered, made comparable (its session id,
    times and generated ids replaced, the request ids checked and replaced)."""
    sid = c.post("/v1/sessions", json={"text": "one ,"}, headers=auth).json()["session_id"]
    path = template.replace("{session_id}", sid)
    calls: list[tuple[str, bytes | None, dict[str, str]]] = [
        (path, b'{"text": "one"}', {}),  # no key, when keys are on
        (path, b'{"text": "one"}', {"Authorization": "Bearer wrong-key-0123456789"}),
        (path, b"{" + b" " * 5000 + b"}", auth),  # 413 by Content-Length
        (path, None, auth),  # 413 as a chunked body arrives
        (path, b"{not json", auth),
        (path, b"", auth),
        (path, b'{"text": "one"}', {**auth, "x-request-id": "trace-7"}),
    ]
    for body in HOT_ROUTES[template]:
        if isinstance(body, str):  # an unknown session
            calls.append((template.replace("{session_id}", body), b'{"text": "one"}', auth))
        else:
            calls.append((path, orjson.dumps(body), auth))
    calls += [(path, orjson.dumps(HOT_ROUTES[template][0]), auth)] * 4  # past the rate: 429
    if template == "/v1/completions":
        calls.append((path, b'{"prompt": "one"}', {**auth, "X-Session-ID": "nope"}))
    answers = []
    for url, raw, headers in calls:
        content = raw if raw is not None else iter([b'{"text": "', b"o" * 5000, b'"}'])
        r = c.post(url, content=content, headers={**JSON, **headers})
        rid = r.headers["x-request-id"]
        assert rid == headers.get("x-request-id") or re.fullmatch("[0-9a-f]{32}", rid)
        assert int(r.headers.get("content-length", len(r.content))) == len(r.content)
        kept = [  # in order, the values that vary as placeholders
            (k, b"<n>" if k in (b"content-length", b"x-request-id") else v)
            for k, v in r.headers.raw
        ]
        body = VOLATILE.sub(b"<v>", r.content.replace(sid.encode(), b"<sid>"))
        answers.append((url.replace(sid, "<sid>"), {"status": r.status_code, "headers": kept,
                                                   "body": body}))  # fmt: skip
    return answers


def requests_counted(c) -> list[str]:
    """The request metrics' samples (counts, not times), this scrape's own left out."""
    lines = c.get("/metrics").text.splitlines()
    return [
        line
        for line in lines
        if line.startswith(("http_requests_total{", "http_request_duration_seconds_count{"))
        and 'route="/metrics"' not in line
    ]


@pytest.mark.parametrize("keys", [True, False], ids=["keys", "no-keys"])
@pytest.mark.parametrize("template", list(HOT_ROUTES))
def test_every_hot_route_answers_as_fastapi_does(store, template, keys):
    """401, 404, 413 (by length and chunked), 422 (the domain's and the schema's: FastAPI's
    own), 429 with RateLimit-* and Retry-After, streams, X-Request-ID; the metrics alike."""
    settings = {
        "DEFAULT_MODEL": "gru",
        "MAX_BODY_BYTES": 4096,
        "RATE_LIMIT_RPS": 0.001,  # no refill within a test
        "RATE_LIMIT_BURST": 9,  # the last requests of a scenario get 429s
        **({"API_KEYS": KEYS} if keys else {}),
    }
    auth = AUTH if keys else {}
    with (
        TestClient(create_app(make_settings(store, FAST_PATH=True, **settings))) as fast,
        TestClient(create_app(make_settings(store, FAST_PATH=False, **settings))) as slow,
    ):
        a, b = scenario(fast, template, auth), scenario(slow, template, auth)
        statuses = {answer["status"] for _, answer in a}
        assert {404, 413, 429} <= statuses and (401 in statuses) == keys
        assert (400 if template == "/v1/completions" else 422) in statuses
        for (url, x), (_, y) in zip(a, b, strict=True):
            assert x == y, url
        assert requests_counted(fast) == requests_counted(slow)


@pytest.mark.parametrize(
    ("raised", "status"), [(RuntimeError("a bug"), 500), (asyncio.CancelledError(), 503)]
)
def test_a_bug_and_the_end_of_the_drain_answer_as_the_stack_does(store, raised, status):
    """An exception escaping a hot route is the stack's 500 with the request id; a
    cancellation at the end of the drain its 503 with Retry-After (app.api.shutdown)."""

    async def broken(*args, **kwargs):
        raise raised

    answers = []
    for fast_path in (True, False):
        with TestClient(create_app(make_settings(store, FAST_PATH=fast_path))) as c:
            c.app.state.service.next_word = broken
            r = c.post("/v1/next-word", json={"text": "one"}, headers={"x-request-id": "bug-2"})
            answers.append((r.status_code, r.headers.raw, r.content))
            assert f'route="/v1/next-word",status="{status}"' in c.get("/metrics").text
    assert answers[0] == answers[1] and answers[0][0] == status


@pytest.mark.parametrize("keys", [True, False], ids=["keys", "no-keys"])
def test_the_hot_gets_answer_as_fastapi_does(store, keys, monkeypatch):
    """GET /health and /ready, ready and not (an engine stopped), with and without a key, an
    X-Request-ID, a body (FastAPI's to answer), a CORS origin: answers, headers in order
    and the metrics equal FastAPI's."""
    settings = {"DEFAULT_MODEL": "gru", **({"API_KEYS": KEYS} if keys else {})}
    calls = [
        ("/health", {}),
        ("/ready", {}),
        ("/health", AUTH),
        ("/health", {"Authorization": "Bearer wrong-key-0123456789"}),
        ("/ready", {"x-request-id": "probe-1"}),
        ("/health", {"content-type": "application/json", "content-length": "2"}),
    ]

    def answers(c) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        out = []
        for path, headers in calls:
            body = b"{}" if "content-length" in headers else None
            r = c.request("GET", path, headers=headers, content=body)
            rid = r.headers["x-request-id"]
            assert rid == headers.get("x-request-id") or re.fullmatch("[0-9a-f]{32}", rid)
            kept = [(k, b"<id>" if k == b"x-request-id" else v) for k, v in r.headers.raw]
            out.append((r.status_code, kept, r.content))
        return out

    served: list[str] = []  # the requests the fast path answered itself
    serve = FastPath._serve

    async def spy(self, scope, *args):
        served.append(scope["path"])
        return await serve(self, scope, *args)

    monkeypatch.setattr(FastPath, "_serve", spy)
    got = []
    for fast_path in (True, False):
        with TestClient(create_app(make_settings(store, FAST_PATH=fast_path, **settings))) as c:
            ready = answers(c)
            c.app.state.service.registry.models["gru"].engine._failure = "it broke (a test)"
            broken = answers(c)
            got.append((ready, broken, requests_counted(c)))
    (ready, broken, counted), slow = got
    assert (ready, broken, counted) == slow
    assert [s for s, _, _ in ready] == [200] * 6
    assert [s for s, _, _ in broken] == [200, 503, 200, 200, 503, 200]
    assert b"it broke (a test)" in broken[1][2]
    assert any('route="/health"' in line and 'method="GET"' in line for line in counted)
    assert served == [path for path, _ in calls[:5]] * 2  # not the GET with a body
