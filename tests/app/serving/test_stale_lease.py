"""A lease left behind by a crashed replica, or restored by a Redis restarted from its AOF
(issue 17, row 7): requests to the session fail fast with 503 and Retry-After, every one of
them, and the session serves again once the lease has expired (SESSION_LEASE_SECONDS)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import redis

from app.main import create_app
from tests.app.conftest import make_settings, run_app

LEASE_S, WAIT_S = 1.0, 0.3


def test_a_stale_lease_fails_fast_and_expires(store, redis_server):
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = make_settings(
        store,
        SESSION_BACKEND="redis",
        REDIS_URL=redis_server.url,
        REDIS_PREFIX=prefix,
        SESSION_LEASE_SECONDS=LEASE_S,
        SESSION_LEASE_WAIT_SECONDS=WAIT_S,
    )

    async def scenario(c: httpx.AsyncClient) -> None:
        sid = (await c.post("/v1/sessions", json={"text": "one ,"})).json()["session_id"]
        # what a replica killed while it held the session leaves behind
        r = redis.Redis.from_url(redis_server.url)
        r.set(f"{prefix}:lock:{sid}", "a-crashed-holder", px=int(LEASE_S * 1000))
        started = time.monotonic()
        answers = await asyncio.gather(
            *[c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"}) for _ in range(10)],
            c.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 2}),
            c.delete(f"/v1/sessions/{sid}"),
        )
        took = time.monotonic() - started
        for a in answers:
            assert a.status_code == 503, a.text
            assert a.headers["retry-after"] == "1"
            assert "is held by another request" in a.json()["detail"]
        assert took < WAIT_S + 0.7  # together, not one wait after another
        await asyncio.sleep(max(0.0, LEASE_S + 0.1 - (time.monotonic() - started)))
        fed = await c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"})
        assert fed.status_code == 200, fed.text
        assert fed.json()["tokens_seen"] == 3
        assert r.get(f"{prefix}:lock:{sid}") is None  # and the request let go of it

    run_app(create_app(settings), scenario)
