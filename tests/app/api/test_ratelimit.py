"""Per-key rate limits: 429 with Retry-After and RateLimit-* past a key's requests or tokens a
second, on both request paths and both bucket stores; off by default.

Rates are chosen so timing cannot flake on a loaded machine: a slow refill (0.1 a second)
where a test counts refusals, and a fast one only where it waits for a refill."""

import asyncio
import time
import uuid

import orjson
import pytest
from fastapi.testclient import TestClient

from app.api.ratelimit import Limit, MemoryBuckets, token_cost
from app.core.config import Settings
from app.main import create_app
from launchers import free_port
from tests.app.conftest import make_settings

KEY1, KEY2 = "key-one-0123456789abcdef", "key-two-0123456789abcdef"
AUTH1 = {"Authorization": f"Bearer {KEY1}"}
AUTH2 = {"Authorization": f"Bearer {KEY2}"}
KEYS = Settings(API_KEYS=f"{KEY1}, {KEY2}").API_KEYS
SLOW = {"RATE_LIMIT_RPS": 0.1, "RATE_LIMIT_BURST": 3}  # 3 at once, then one every 10 s
HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture(params=["memory", "redis"])
def stores(request):
    if request.param == "memory":
        return {"SESSION_BACKEND": "memory"}
    server = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return {"SESSION_BACKEND": "redis", "REDIS_URL": server.url, "REDIS_PREFIX": prefix}


def keyed(store, **overrides):
    return make_settings(store, DEFAULT_MODEL="gru", API_KEYS=KEYS, **overrides)


def test_limits_are_off_by_default(store):
    with TestClient(create_app(make_settings(store))) as c:
        for _ in range(20):
            r = c.post("/v1/next-word", json={"text": "one"})
            assert r.status_code == 200
            assert not any(h in r.headers for h in HEADERS)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_past_the_rate_a_key_gets_429_and_another_key_does_not(store, stores, fast_path):
    settings = keyed(store, FAST_PATH=fast_path, **SLOW, **stores)
    with TestClient(create_app(settings)) as c:
        for remaining in (2, 1, 0):
            r = c.post("/v1/next-word", json={"text": "one"}, headers=AUTH1)
            assert r.status_code == 200, r.text
            assert r.headers["ratelimit-limit"] == "3"
            assert r.headers["ratelimit-remaining"] == str(remaining)
            assert 1 <= int(r.headers["ratelimit-reset"]) <= 30
        for path, body in [
            ("/v1/next-word", {"text": "one"}),  # the fast path's route (when on)
            ("/v1/continuation", {"text": "one", "max_words": 2}),  # FastAPI's
            ("/v1/models", None),
        ]:
            r = c.request("POST" if body else "GET", path, json=body, headers=AUTH1)
            assert r.status_code == 429, (path, r.text)
            assert r.json() == {
                "detail": "rate limit exceeded: this API key may make 0.1 requests a second "
                "(bursts of 3) (RATE_LIMIT_RPS); retry later"
            }
            assert 1 <= int(r.headers["retry-after"]) <= 10
            assert r.headers["ratelimit-limit"] == "3"
            assert r.headers["ratelimit-remaining"] == "0"
            assert 1 <= int(r.headers["ratelimit-reset"]) <= 30
        r = c.post("/v1/next-word", json={"text": "one"}, headers=AUTH2)
        assert r.status_code == 200
        assert r.headers["ratelimit-remaining"] == "2"


def test_completions_get_openais_shape(store):
    with TestClient(create_app(keyed(store, **SLOW))) as c:
        for _ in range(3):
            body = {"model": "gru", "prompt": "one", "max_tokens": 1}
            assert c.post("/v1/completions", json=body, headers=AUTH1).status_code == 200
        r = c.post("/v1/completions", json=body, headers=AUTH1)
        assert r.status_code == 429
        assert r.json() == {
            "error": {
                "message": "rate limit exceeded: this API key may make 0.1 requests a second "
                "(bursts of 3) (RATE_LIMIT_RPS); retry later",
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert int(r.headers["retry-after"]) >= 1
        assert "x-should-retry" not in r.headers


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_a_bad_key_gets_401_and_is_not_charged(store, fast_path):
    with TestClient(create_app(keyed(store, FAST_PATH=fast_path, **SLOW))) as c:
        for headers in ({}, {"Authorization": "Bearer not-a-key-of-this-server"}) * 3:
            r = c.post("/v1/next-word", json={"text": "one"}, headers=headers)
            assert r.status_code == 401
            assert "ratelimit-limit" not in r.headers
        r = c.post("/v1/next-word", json={"text": "one"}, headers=AUTH1)
        assert r.headers["ratelimit-remaining"] == "2"


def test_the_bucket_refills(store, stores):
    settings = keyed(store, RATE_LIMIT_RPS=20, RATE_LIMIT_BURST=2, **stores)
    with TestClient(create_app(settings)) as c:
        # at 20 a second, requests come faster than that here: one is refused soon
        codes = [c.get("/v1/models", headers=AUTH1).status_code for _ in range(40)]
        assert 429 in codes
        time.sleep(0.2)  # 4 requests' worth, the bucket holds 2
        assert c.get("/v1/models", headers=AUTH1).status_code == 200


def test_the_bucket_refills_at_its_rate():
    """The in-memory bucket on a clock the test sets (steps exact in binary)."""
    now = [1024.0]
    buckets = MemoryBuckets((Limit("requests", "RATE_LIMIT_RPS", 32, 3),), clock=lambda: now[0])

    async def run() -> list[bool]:
        got = []
        for step in [0, 0, 0, 0, 1 / 64, 1 / 64, 1 / 32, 1 / 32, 1.0, 0, 0, 0]:
            now[0] += step
            got.append((await buckets.take("k", (1.0,))).allowed)
        return got

    # 3 at once; 1/64 s refills half a request, 1/32 s one; a second fills the bucket (3)
    got = asyncio.run(run())
    assert got == [True, True, True, False, False, True, True, True, True, True, True, False]


def test_the_memory_buckets_are_bounded():
    buckets = MemoryBuckets((Limit("requests", "RATE_LIMIT_RPS", 1, 1),), cap=2)
    for who in "abc":
        assert asyncio.run(buckets.take(who, (1.0,))).allowed
    assert list(buckets._buckets) == ["b", "c"]  # the least recently seen went


def test_without_keys_the_limit_is_per_client_address(store):
    with TestClient(create_app(make_settings(store, **SLOW))) as a:
        # another client address on the same app (a route that needs no engine: b runs no
        # lifespan of its own)
        b = TestClient(a.app, client=("192.0.2.7", 50001))
        for _ in range(3):
            assert a.get("/v1/models").status_code == 200
        r = a.get("/v1/models")
        assert r.status_code == 429
        assert "this client address may make" in r.json()["detail"]
        assert b.get("/v1/models").status_code == 200


def test_with_redis_two_replicas_share_one_bucket(store, redis_server):
    redis = {"SESSION_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_PREFIX": "shared"}
    settings = keyed(store, **SLOW, **redis)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        assert a.post("/v1/next-word", json={"text": "one"}, headers=AUTH1).status_code == 200
        assert b.post("/v1/next-word", json={"text": "one"}, headers=AUTH1).status_code == 200
        r = a.post("/v1/next-word", json={"text": "one"}, headers=AUTH1)
        assert r.headers["ratelimit-remaining"] == "0"
        assert b.post("/v1/next-word", json={"text": "one"}, headers=AUTH1).status_code == 429
        assert a.post("/v1/next-word", json={"text": "one"}, headers=AUTH1).status_code == 429
        assert b.post("/v1/next-word", json={"text": "one"}, headers=AUTH2).status_code == 200


def test_redis_out_of_reach_fails_open(store, capfd):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = keyed(store, **SLOW, SESSION_BACKEND="redis", REDIS_URL=dead)
    with TestClient(create_app(settings)) as c:
        for _ in range(6):
            r = c.post("/v1/next-word", json={"text": "one"}, headers=AUTH1)
            assert r.status_code == 200
            assert "ratelimit-limit" not in r.headers
    assert capfd.readouterr().err.count("rate limits not applied") == 1  # once a minute


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_tokens_a_second(store, stores, fast_path):
    limits = {"RATE_LIMIT_TOKENS_PER_SECOND": 0.1, "RATE_LIMIT_TOKEN_BURST": 10}
    with TestClient(create_app(keyed(store, FAST_PATH=fast_path, **limits, **stores))) as c:
        text = {"text": "one , two ,"}  # 4 tokens
        for remaining in (6, 2):
            r = c.post("/v1/next-word", json=text, headers=AUTH1)
            assert r.status_code == 200
            assert r.headers["ratelimit-limit"] == "10"
            assert r.headers["ratelimit-remaining"] == str(remaining)
        r = c.post("/v1/next-word", json=text, headers=AUTH1)
        assert r.status_code == 429
        assert r.json()["detail"] == (
            "rate limit exceeded: this API key may make 0.1 tokens a second (bursts of 10; "
            "this request's estimate is 4) (RATE_LIMIT_TOKENS_PER_SECOND); retry later"
        )
        assert 10 <= int(r.headers["retry-after"]) <= 30  # 2 tokens short
        # a cheap request still fits; a cost over the bucket passes only when it is full
        assert c.post("/v1/next-word", json={"text": "one"}, headers=AUTH1).status_code == 200
        body = {"model": "gru", "prompt": "one", "max_tokens": 50}
        r = c.post("/v1/completions", json=body, headers=AUTH2)
        assert r.status_code == 200
        assert r.headers["ratelimit-remaining"] == "0"  # 51 taken from 10: in debt
        r = c.post("/v1/completions", json={**body, "max_tokens": 1}, headers=AUTH2)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 400


def test_both_limits_at_once(store):
    limits = {**SLOW, "RATE_LIMIT_TOKENS_PER_SECOND": 0.1, "RATE_LIMIT_TOKEN_BURST": 5}
    with TestClient(create_app(keyed(store, **limits))) as c:
        r = c.post("/v1/next-word", json={"text": "one two three"}, headers=AUTH1)
        # the tokens bucket is the nearer to empty (2 of 5, against 2 of 3 requests)
        assert (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == ("5", "2")
        r = c.post("/v1/next-word", json={"text": "one two three"}, headers=AUTH1)
        assert r.status_code == 429
        assert "(RATE_LIMIT_TOKENS_PER_SECOND)" in r.json()["detail"]
        assert c.get("/v1/models", headers=AUTH1).headers["ratelimit-remaining"] == "1"
        assert c.get("/v1/models", headers=AUTH1).headers["ratelimit-remaining"] == "0"
        r = c.get("/v1/models", headers=AUTH1)
        assert r.status_code == 429
        assert "(RATE_LIMIT_RPS)" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "cost"),
    [
        ("/v1/next-word", {"text": "One, two  three"}, 4),
        ("/v1/sessions/x/next-word", {"text": ""}, 0),
        ("/v1/sessions", {"text": "one two"}, 2),
        ("/v1/continuation", {"text": "one"}, 21),
        ("/v1/sessions/x/continuation", {"text": "one", "max_words": 5}, 6),
        ("/v1/completions", {"prompt": "one two"}, 18),
        ("/v1/completions", {"prompt": ["one", "two three"], "n": 2, "max_tokens": 3}, 18),
        ("/v1/completions", {"prompt": [[1, 2], [3]], "best_of": 3, "n": 2, "max_tokens": 0}, 9),
        ("/v1/completions", {"prompt": [5, 6, 7], "max_tokens": None}, 19),
        ("/v1/completions", {"prompt": 12}, 0),
        ("/v1/next-word", {"text": 5}, 0),
    ],
)
def test_token_cost_estimates(path, body, cost):
    assert token_cost(path, orjson.dumps(body)) == cost


def test_token_cost_of_bodies_that_are_not_objects():
    assert token_cost("/v1/next-word", b"not json") == 0
    assert token_cost("/v1/next-word", b"[1, 2]") == 0
    assert token_cost("/v1/next-word", b"") == 0


def test_bad_settings_are_refused():
    for bad in ({"RATE_LIMIT_RPS": -1}, {"RATE_LIMIT_BURST": 0.5}, {"RATE_LIMIT_RPS": "inf"}):
        with pytest.raises(ValueError):
            Settings(**bad)
