"""What any client may send, however hostile: bounded bodies and headers, errors that quote
short prefixes and never a secret, request ids, CORS. Reproductions of issue 9's findings."""

import json
import re

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.app.conftest import make_settings

JSON = {"content-type": "application/json"}


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi"])
def client(store, request):
    with TestClient(create_app(make_settings(store, FAST_PATH=request.param))) as c:
        yield c


@pytest.fixture
def sid(client):
    return client.post("/v1/sessions", json={"text": "one"}).json()["session_id"]


ROUTES = [
    ("POST", "/v1/next-word"),
    ("POST", "/v1/continuation"),
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/{sid}/next-word"),
    ("POST", "/v1/sessions/{sid}/continuation"),
    ("POST", "/v1/sessions/{sid}/reset"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("DELETE", "/v1/sessions/{sid}"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_body_past_max_body_bytes_is_refused_unread_on_every_route(client, sid, method, path):
    body = b'{"text": "' + b"one " * 300_000 + b'"}'  # 1.2 MB
    r = client.request(method, path.format(sid=sid), content=body, headers=JSON)
    assert r.status_code == 413, r.text
    assert r.json() == {
        "detail": f"request body is {len(body):,} bytes; this server takes at most "
        "1,048,576 bytes (MAX_BODY_BYTES)"
    }
    assert r.headers["connection"] == "close" and r.headers["x-request-id"]
    # nothing happened: the session is as it was
    assert client.get(f"/v1/sessions/{sid}").json()["tokens_seen"] == 1


def test_a_chunked_body_is_counted_as_it_comes(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 32_768  # 1.3 MB in all, no Content-Length

    r = client.post("/v1/next-word", content=chunks(), headers=JSON)
    assert r.status_code == 413, r.text
    # issue 17 row 16: the bytes counted and the limit, as the Content-Length case says them
    detail = r.json()["detail"]
    m = re.fullmatch(
        r"request body is at least ([\d,]+) bytes \(chunked, refused as it arrived\); "
        r"this server takes at most 1,048,576 bytes \(MAX_BODY_BYTES\)",
        detail,
    )
    assert m and 1_048_576 < int(m[1].replace(",", "")) <= 40 * 32_768, detail

    def small():
        yield b'{"text": '
        yield b'"one , two"}'

    r = client.post("/v1/next-word", content=small(), headers=JSON)
    assert r.status_code == 200 and r.json()["tokens"] == ["one", ",", "two"]


def test_the_limit_is_a_setting(store):
    with TestClient(create_app(make_settings(store, MAX_BODY_BYTES=2048))) as c:
        assert c.post("/v1/next-word", json={"text": "one " * 300}).status_code == 200
        r = c.post("/v1/next-word", json={"text": "one " * 600})
        assert r.status_code == 413 and "2,048 bytes" in r.json()["detail"]


def test_huge_headers_get_431(client):
    r = client.get("/health", headers={"x-filler": "a" * 20_000})
    assert r.status_code == 431 and "MAX_HEADER_BYTES" in r.json()["detail"]


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e309"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/next-word", "top_k"),
        ("/v1/continuation", "temperature"),
        ("/v1/continuation", "top_p"),
        ("/v1/continuation", "max_words"),
        ("/v1/continuation", "seed"),
    ],
)
def test_non_finite_numbers_are_a_422_naming_the_field(client, path, field, number):
    raw = b'{"text": "one", "%s": %s}' % (field.encode(), number)
    r = client.post(path, content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", field]
    assert client.get("/health").status_code == 200  # the same keep-alive connection


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (rb'{"text": ["\ud800"]}', ["body", "text"]),
        (rb'{"text": "one", "\ud800": 1}', ["body"]),  # pydantic: not a valid string
        (rb'{"text": "one", "stop": ["\udfff"]}', None),
    ],
)
def test_lone_surrogates_are_a_422(client, raw, loc):
    r = client.post("/v1/continuation", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    if loc is not None:
        assert r.json()["detail"][0]["loc"] == loc
    assert client.get("/health").status_code == 200


def test_a_surrogate_in_a_text_is_an_unknown_word(client):
    r = client.post("/v1/next-word", content=rb'{"text": "one \ud800"}', headers=JSON)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("unknown word '\\ud800' at position 1")


def short(r, limit=400):
    assert len(r.content) < limit, f"{len(r.content)} bytes: {r.text[:200]}"
    return r.json()["detail"]


def test_errors_quote_a_short_prefix_of_any_input(client):
    word = "x" * 1_000_000
    r = client.post("/v1/continuation", json={"text": "one", "stop": [word]})
    assert r.status_code == 422
    (error,) = short(r)
    assert error["loc"] == ["body", "stop", 0] and error["input"].endswith("(1,000,000 chars)")
    r = client.post("/v1/next-word", json={"text": "one " + "y" * 5000})
    assert short(r).startswith(f"unknown word {'y' * 40!r}... (5,000 characters) at position 1")
    r = client.get("/v1/sessions/" + "z" * 65_000)
    assert r.status_code == 404 and "(65,000 characters)" in short(r)
    r = client.post("/v1/continuation", json={"text": "one", "model": "m" * 9000})
    assert r.status_code == 404 and "(9,000 characters)" in short(r)
    r = client.post("/v1/continuation", json={"text": "one", "stop": ["eleventy" * 8]})
    assert r.status_code == 422 and "(64 characters)" in short(r)
    r = client.post("/v1/next-word", json={"text": 5, "model": ["a" * 10_000]})
    assert r.status_code == 422
    assert all(len(json.dumps(e)) < 300 for e in r.json()["detail"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "one", "top_k": "5"}, "top_k"),
        ({"text": "one", "top_k": 5.5}, "top_k"),
        ({"text": "one", "top_k": True}, "top_k"),
        ({"text": "one", "stream": 0}, "stream"),
        ({"text": "one", "temperature": "0.5"}, "temperature"),
        ({"text": "one", "stop": [""]}, "stop"),
        ({"text": "one", "top_k": 41}, "top_k"),
    ],
)
def test_strict_types_and_bounds(client, body, field):
    r = client.post("/v1/continuation", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]


def test_405_allows_every_method_of_the_path(client):
    for path, allow in [
        ("/v1/sessions", "GET, POST"),
        ("/v1/sessions/abc", "DELETE, GET"),
        ("/v1/next-word", "POST"),
    ]:
        r = client.put(path)
        assert r.status_code == 405 and r.headers["allow"] == allow, path


def test_an_integral_number_is_an_integer(client):
    """JSON has one number type: 2.0 is 2, as the schema's `integer` reads it."""
    r = client.post("/v1/next-word", json={"text": "one ,", "top_k": 2.0})
    assert r.status_code == 200 and len(r.json()["next"]) == 2
    r = client.post("/v1/continuation", json={"text": "one ,", "max_words": 3.0, "seed": 7.0})
    assert r.status_code == 200 and len(r.json()["words"]) == 3


def test_the_fuzzer_finding_answers_and_the_model_goes_on(client):
    """Temperature 0.001 once overflowed and sampled the least likely word. At that temperature
    a word is drawn in proportion to prob ** 1000: only a word within about 1% of the most
    likely one's probability has a chance (a near tie in a test model's few-step training is
    a fair draw, not greedy's word)."""
    text = "one thousand two hundred"
    body = {"text": text, "max_words": 1, "temperature": 0.001, "top_p": 0.9}
    probs = {
        w["word"]: w["prob"]
        for w in client.post("/v1/next-word", json={"text": text, "top_k": 40}).json()["next"]
    }
    best = max(probs.values())
    for extra in ({}, {"top_p": None}):  # top_p None: was the least likely
        for _ in range(5):
            r = client.post("/v1/continuation", json={**body, **extra})
            assert r.status_code == 200
            (word,) = r.json()["words"]
            assert probs[word] >= 0.98 * best, (word, probs[word], best)
    assert client.get("/ready").status_code == 200


def test_request_ids(client):
    r = client.get("/health", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    for bad in ("a" * 200, "white space", "new\\nline", "<script>"):
        r = client.get("/health", headers={"x-request-id": bad})
        assert re.fullmatch("[0-9a-f]{32}", r.headers["x-request-id"]), bad
    ids = {client.get("/health").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    for r in (  # errors, fast path and 413s included
        client.post("/v1/next-word", json={"text": "eleventy"}),
        client.post("/v1/next-word", json={"text": "one"}),
        client.post("/v1/next-word", content=b"x" * 2_000_000, headers=JSON),
        client.get("/v1/sessions/nope"),
    ):
        assert re.fullmatch("[0-9a-f]{32}", r.headers["x-request-id"])


def test_request_ids_are_logged(store, capfd):
    with TestClient(create_app(Settings(STORE=store, DEVICE="cpu"))) as c:  # access log on
        c.post("/v1/next-word", json={"text": "one"}, headers={"x-request-id": "trace-42"})
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    (entry,) = [e for e in lines if e.get("request_id") == "trace-42"]
    assert entry["route"] == "/v1/next-word" and entry["status"] == 200


def test_an_unexpected_error_is_a_json_500_with_the_request_id(store):
    with TestClient(create_app(make_settings(store))) as c:

        def broken():
            raise RuntimeError("a bug")

        c.app.state.service.list_models = broken
        r = c.get("/v1/models", headers={"x-request-id": "bug-1"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"
        assert r.json() == {"detail": "internal error; the log has it under request id bug-1"}


def test_cors_is_off_by_default(client):
    r = client.get("/health", headers={"origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    r = client.options(
        "/v1/next-word",
        headers={"origin": "https://elsewhere.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_turn_it_on(store):
    settings = make_settings(store, CORS_ORIGINS=["https://ui.example"])
    with TestClient(create_app(settings)) as c:
        r = c.options(
            "/v1/next-word",
            headers={
                "origin": "https://ui.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = c.post("/v1/next-word", json={"text": "one"}, headers={"origin": "https://ui.example"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = c.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_origins_from_the_environment(monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, http://b.example:3000")
    assert Settings().CORS_ORIGINS == ["https://a.example", "http://b.example:3000"]
    monkeypatch.setenv("CORS_ORIGINS", '["https://a.example"]')
    assert Settings().CORS_ORIGINS == ["https://a.example"]
