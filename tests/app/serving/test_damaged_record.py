"""A Redis record that cannot be read (issue 17, row 13): 409 for that session, saying it is
damaged; its owner's listing skips it and shows the others; it can still be deleted."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("last", b"not json"),
        ("last", b'{"a": 1}'),
        ("last", b"[" * 100_000),  # deep enough for a RecursionError
        ("tokens", b"many"),
        ("created", b"\xff\xfe"),
        ("state", None),  # a field gone
    ],
)
def test_a_damaged_record_is_a_409_and_skipped_in_listings(store, redis_server, field, value):
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = make_settings(
        store, SESSION_BACKEND="redis", REDIS_URL=redis_server.url, REDIS_PREFIX=prefix
    )
    with TestClient(create_app(settings)) as c:
        ids = [c.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"] for _ in "ab"]
        bad, good = ids
        r = redis.Redis.from_url(redis_server.url)
        key = f"{prefix}:s:{bad}"
        if value is None:
            r.hdel(key, field)
        else:
            r.hset(key, field, value)
        started = time.monotonic()
        for method, path, body in [
            ("GET", f"/v1/sessions/{bad}", None),
            ("POST", f"/v1/sessions/{bad}/next-word", {"text": "two"}),
            ("POST", f"/v1/sessions/{bad}/continuation", {"max_words": 2}),
            ("POST", f"/v1/sessions/{bad}/reset", None),
        ]:
            got = c.request(method, path, json=body)
            if field == "state" and method == "GET":
                assert got.status_code == 200  # reading the record needs no state
                continue
            assert got.status_code == 409, (path, got.text)
            assert "is damaged" in got.json()["detail"], got.text
            assert r.get(f"{prefix}:lock:{bad}") is None  # the lease was given back
        listed = c.get("/v1/sessions")
        assert listed.status_code == 200, listed.text
        shown = sorted(ids) if field == "state" else [good]  # the record itself needs no state
        assert [s["session_id"] for s in listed.json()["sessions"]] == shown
        assert c.post(f"/v1/sessions/{good}/next-word", json={"text": "two"}).status_code == 200
        assert c.delete(f"/v1/sessions/{bad}").status_code == 204
        assert c.get(f"/v1/sessions/{bad}").status_code == 404
        assert time.monotonic() - started < 10
