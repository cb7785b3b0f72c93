"""No secret leaves the server: URLs are shown without credentials, inputs by a prefix."""

import json
import re

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.redact import clip, redact_path, redact_url, session_tag, short_digests
from app.main import create_app
from launchers import free_port
from tests.app.conftest import make_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://user:hunter2@10.0.0.5/1", "redis://***@10.0.0.5/1"),
        ("rediss://default:hunter2@[::1]:6380/0", "rediss://***@[::1]:6380/0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis://:pw@host:notaport/0", "<a URL that cannot be parsed>"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_clip_and_digests():
    assert clip("one") == "'one'"
    assert clip("x" * 100) == f"{'x' * 40!r}... (100 characters)"
    digest = "ab" * 32
    assert short_digests(f"sha256 is {digest}, meta says {digest}") == (
        "sha256 is abababababab..., meta says abababababab..."
    )


def test_the_redis_password_is_never_shown(store, capfd):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(store, SESSION_BACKEND="redis", REDIS_URL=url)
    with TestClient(create_app(settings)) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert f"redis://***@127.0.0.1:{url.rsplit(':', 1)[1]}" in ready.json()["problem"]
        r = c.post("/v1/sessions", json={})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "***@127.0.0.1" in r.json()["detail"]
        for text in (ready.text, r.text):
            assert "hunter2" not in text
    assert "hunter2" not in capfd.readouterr().err


DIGITS = "7" * 4000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", '{"prompt": "one", "logit_bias": {"' + ("x" * 500_000) + '": 1}}'),
        ("/v1/completions", '{"prompt": "one", "logit_bias": {"' + DIGITS + '": 1}}'),
        ("/v1/completions", '{"prompt": "one", "logit_bias": {"' + ("y" * 500_000) + '": 1000}}'),
        ("/v1/completions", '{"prompt": [' + DIGITS + "]}"),
        ("/v1/completions", '{"prompt": [[10], [' + DIGITS + "]]}"),
        ("/v1/completions", '{"prompt": "one", "top_k": ' + DIGITS + "}"),
        ("/v1/completions", '{"prompt": "one", "max_tokens": ' + DIGITS + "}"),
        ("/v1/completions", '{"prompt": "one", "logprobs": ' + DIGITS + "}"),
        ("/v1/continuation", '{"text": "one", "max_words": ' + DIGITS + "}"),
        ("/v1/continuation", '{"text": "one", "top_k": ' + DIGITS + "}"),
        ("/v1/next-word", '{"text": "one ' + ("z" * 9000) + '"}'),
    ],
)
def test_errors_quote_an_input_by_a_short_prefix(store, path, body):
    """Issue 17, row 10: a 500 KB key or a 4,000-digit number comes back as 40 characters."""
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru"))) as c:
        r = c.post(path, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:300]
    assert len(r.content) < 400, r.text[:400]
    assert "characters)" in r.text or "chars)" in r.text, r.text


def test_session_ids_are_not_in_the_access_log(store, capfd):
    """Issue 17 row 15: with keys off a session id is all it takes to use the session; the
    access log shows a tag of it instead (the same on every line about that session)."""
    settings = Settings(STORE=store, DEVICE="cpu")  # access log on
    with TestClient(create_app(settings)) as c:
        sid = c.post("/v1/sessions", json={"text": "one"}).json()["session_id"]
        c.post(f"/v1/sessions/{sid}/next-word", json={"text": ","})
        c.get(f"/v1/sessions/{sid}")
        c.delete(f"/v1/sessions/{sid}")
    err = capfd.readouterr().err
    assert sid not in err and sid[:12] not in err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    paths = [e["path"] for e in lines if e.get("logger") == "app.access"]
    tag = session_tag(sid)
    assert re.fullmatch("~[0-9a-f]{8}", tag)
    assert paths == [
        "/v1/sessions",
        f"/v1/sessions/{tag}/next-word",
        f"/v1/sessions/{tag}",
        f"/v1/sessions/{tag}",
    ]


def test_redact_path():
    assert redact_path("/v1/sessions") == "/v1/sessions"
    assert redact_path("/v1/sessions/abc/reset") == f"/v1/sessions/{session_tag('abc')}/reset"
    assert redact_path("/v1/next-word") == "/v1/next-word"
