"""Several app processes sharing sessions through one real Redis."""

import concurrent.futures
import uuid

import pytest
import redis

from launchers import AppProcess, RedisServer
from training.data import number_words

WORDS = " , ".join(number_words(n) for n in range(2345, 2351)).split()


@pytest.fixture
def shared(store, redis_server):
    """Settings two replicas share: the Redis and a key prefix of this test alone."""
    return {
        "SESSION_BACKEND": "redis",
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": f"t{uuid.uuid4().hex[:12]}",
    }


@pytest.fixture
def two(store, shared):
    a, b = AppProcess(store, **shared).start(), AppProcess(store, **shared).start()
    yield a, b
    a.kill()
    b.kill()


def probs(body):
    return {w["word"]: w["prob"] for w in body["next"]}


def close(a, b):
    assert a.keys() == b.keys()
    for word in a:
        assert a[word] == pytest.approx(b[word], abs=1e-5), word


def test_a_text_fed_alternately_to_two_replicas(two):
    a, b = two
    with a.client() as ca, b.client() as cb:
        sid = ca.post("/v1/sessions", json={}).json()["session_id"]
        for i, word in enumerate(WORDS):
            c = ca if i % 2 == 0 else cb
            r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": word, "top_k": 40})
            assert r.status_code == 200, r.text
        whole = ca.post("/v1/next-word", json={"text": " ".join(WORDS), "top_k": 40}).json()
        assert r.json()["tokens_seen"] == len(WORDS)
        close(probs(r.json()), probs(whole))
        assert cb.get(f"/v1/sessions/{sid}").json()["last_words"] == WORDS[-10:]
        # and a continuation on one replica is seen by the other
        cont = cb.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 4}).json()
        after = ca.get(f"/v1/sessions/{sid}").json()
        assert after["tokens_seen"] == len(WORDS) + 4
        assert after["last_words"][-4:] == cont["words"]


def test_concurrent_requests_split_across_replicas_lose_nothing(two):
    a, b = two
    with a.client() as ca:
        sid = ca.post("/v1/sessions", json={}).json()["session_id"]

    def send(i):
        app = a if i % 2 == 0 else b
        with app.client() as c:
            return c.post(f"/v1/sessions/{sid}/next-word", json={"text": "one", "top_k": 3})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(send, range(40)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    assert sorted(r.json()["tokens_seen"] for r in rs) == list(range(1, 41))
    with a.client() as ca:
        final = ca.post(f"/v1/sessions/{sid}/next-word", json={"top_k": 40}).json()
        whole = ca.post("/v1/next-word", json={"text": "one " * 40, "top_k": 40}).json()
    assert final["tokens_seen"] == 40
    close(probs(final), probs(whole))


def test_a_session_survives_a_restart(store, shared):
    app = AppProcess(store, **shared).start()
    try:
        with app.client() as c:
            sid = c.post("/v1/sessions", json={"text": " ".join(WORDS[:9])}).json()["session_id"]
        app.stop()
        app.start()
        with app.client() as c:
            r = c.post(
                f"/v1/sessions/{sid}/next-word", json={"text": " ".join(WORDS[9:]), "top_k": 40}
            )
            whole = c.post("/v1/next-word", json={"text": " ".join(WORDS), "top_k": 40})
        assert r.status_code == 200 and r.json()["tokens_seen"] == len(WORDS)
        close(probs(r.json()), probs(whole.json()))
    finally:
        app.kill()


def test_redis_down_at_start_then_back(store, tmp_path):
    server = RedisServer(tmp_path / "redis")  # not started yet
    app = AppProcess(store, SESSION_BACKEND="redis", REDIS_URL=server.url).start(wait_ready=False)
    try:
        with app.client() as c:
            ready = c.get("/ready")
            assert ready.status_code == 503
            assert "Redis" in ready.json()["problem"] and "unreachable" in ready.json()["problem"]
            r = c.post("/v1/sessions", json={})
            assert r.status_code == 503 and "Redis" in r.json()["detail"]
            assert c.post("/v1/next-word", json={"text": "one"}).status_code == 200  # stateless
            server.start()
            assert c.get("/ready").status_code == 200
            assert c.post("/v1/sessions", json={"text": "one"}).status_code == 201
    finally:
        app.kill()
        server.stop()


def test_redis_lost_while_running_then_back(store, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    app = AppProcess(store, SESSION_BACKEND="redis", REDIS_URL=server.url).start()
    try:
        with app.client() as c:
            sid = c.post("/v1/sessions", json={"text": "one"}).json()["session_id"]
            server.stop()
            r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"})
            assert r.status_code == 503
            assert "unreachable" in r.json()["detail"] and "retry" in r.json()["detail"]
            assert c.get("/ready").status_code == 503
            assert c.get("/health").status_code == 200  # the process itself is fine
            server.start()  # same port, empty (this test's Redis keeps no data)
            assert c.get("/ready").status_code == 200
            s = c.post("/v1/sessions", json={"text": "one"})
            assert s.status_code == 201
            r = c.post(f"/v1/sessions/{s.json()['session_id']}/next-word", json={"text": "two"})
            assert r.status_code == 200 and r.json()["tokens_seen"] == 2
    finally:
        app.kill()
        server.stop()


def test_a_state_of_the_wrong_shape_is_a_409(two, shared):
    a, _ = two
    with a.client() as c:
        sid = c.post("/v1/sessions", json={"text": "one"}).json()["session_id"]
        # as if the model had been replaced by one with nh 32
        key = f"{shared['REDIS_PREFIX']}:s:{sid}"
        redis.Redis.from_url(shared["REDIS_URL"]).hset(
            key, mapping={"shape": "1,32", "state": b"\0" * 128}
        )
        r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"})
        assert r.status_code == 409
        assert (
            "shape (1,32)" in r.json()["detail"] and "the model was replaced" in r.json()["detail"]
        )
        # the refused request left the session as it was, and unlocked
        again = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"})
        assert again.status_code == 409
        assert c.delete(f"/v1/sessions/{sid}").status_code == 204


def test_a_redis_restart_leaves_no_stale_pooled_connection(store, tmp_path):
    """The reproduction: a pool warmed by concurrent requests, Redis restarted, then 32
    concurrent requests: before the reconnect-and-retry, some got 503 from dead pooled
    connections while /ready said 200. Now every one succeeds."""
    server = RedisServer(tmp_path / "redis").start()
    app = AppProcess(store, SESSION_BACKEND="redis", REDIS_URL=server.url).start()

    def create(c):
        return c.post("/v1/sessions", json={"text": "one , two"}).status_code

    try:
        with app.client() as c, concurrent.futures.ThreadPoolExecutor(32) as pool:
            assert list(pool.map(lambda _: create(c), range(32))) == [201] * 32  # a warm pool
            server.stop()
            server.start()  # same port, a new process: every pooled connection is dead
            assert c.get("/ready").status_code == 200
            assert list(pool.map(lambda _: create(c), range(32))) == [201] * 32
    finally:
        app.kill()
        server.stop()
