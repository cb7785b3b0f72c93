"""The session-store contract: the same cases against the memory and the Redis store, so
their behaviour cannot drift (ownership, paging, TTL, DELETE, the caps)."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from app.core.errors import AtCapacity, NotReady, UnknownSession
from app.core.security import ANONYMOUS
from app.engine.engine import Engine
from app.engine.registry import LoadedModel, ModelEntry, ModelRegistry
from app.engine.sequences import ExportedState
from app.serving.redis_sessions import RedisSessionStore
from app.serving.sessions import MemorySessionStore, SessionStore
from model_store import Checkpoint, CheckpointRef, ModelConfig, Vocab, build_model

A, B = "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"  # two API keys' owner ids


@pytest.fixture
def model():
    """A model whose state is one (1, 4) float32 part, served by a real (never started)
    engine: the stores open, export and close its sequences."""
    vocab = Vocab(("xxunk", "one", ","))
    config = ModelConfig("gru", vocab_size=len(vocab), hidden=4)
    lm = build_model(config)
    engine = Engine(lm, vocab, torch.device("cpu"), name="m")
    ckpt = Checkpoint(CheckpointRef("m", 1, Path("m/1")), {"metrics": []}, config, vocab, lm)
    return LoadedModel(ckpt, engine.device, engine)


def registry_of(model: LoadedModel) -> ModelRegistry:
    return ModelRegistry({"m": ModelEntry("m", {1: model}, 1)}, "m")


@pytest.fixture(params=["memory", "redis"])
def make(request, model) -> Callable[..., SessionStore]:
    """Builds a store of the parametrised kind (inside the test's event loop)."""

    def memory(**kw: Any) -> SessionStore:
        return MemorySessionStore(
            kw.get("ttl_s", 100),
            kw.get("max_sessions", 1000),
            kw.get("policy", "reject"),
            max_per_owner=kw.get("max_per_owner"),
        )

    def redis(**kw: Any) -> SessionStore:
        return RedisSessionStore(
            server.url,
            registry_of(model),
            kw.get("ttl_s", 100),
            kw.get("max_sessions", 1000),
            kw.get("policy", "reject"),
            prefix=f"c{uuid.uuid4().hex[:12]}",
            max_per_owner=kw.get("max_per_owner"),
        )

    if request.param == "memory":
        return memory
    server = request.getfixturevalue("redis_server")
    return redis


def run(make: Callable[..., SessionStore], scenario: Callable[..., Awaitable[None]], **kw: Any):
    async def main() -> None:
        store = make(**kw)
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def unknown_message(sid: str) -> str:
    return f"no session {sid!r}: it never existed, was deleted or expired"


def test_a_lease_keeps_its_work_and_describe_shows_it(make, model):
    async def scenario(store: SessionStore) -> None:
        r = await store.create(model, A)
        assert (r.model, r.tokens_seen, r.last_words) == ("m", 0, [])
        assert r.expires_at == pytest.approx(r.created + 100, abs=0.01)
        async with store.lease(r.id, A) as lease:
            lease.seq.restore(ExportedState.pack({"h": torch.full((1, 4), 0.5)}, model.engine.spec))
            lease.saw(["one", ","])
        async with store.lease(r.id, A) as lease:
            assert lease.tokens_seen == 2 and lease.last_words == ["one", ","]
            assert torch.equal(lease.seq.state()["h"], torch.full((1, 4), 0.5))
        got = await store.describe(r.id, A)
        assert (got.tokens_seen, got.last_words, got.created) == (2, ["one", ","], r.created)
        assert model.engine.open_sequences == (1 if isinstance(store, MemorySessionStore) else 0)

    run(make, scenario)


def test_another_owners_session_does_not_exist_for_it(make, model):
    async def scenario(store: SessionStore) -> None:
        r = await store.create(model, A)
        calls = {
            "describe": lambda: store.describe(r.id, B),
            "delete": lambda: store.delete(r.id, B),
        }
        for name, call in calls.items():
            with pytest.raises(UnknownSession) as e:
                await call()
            assert e.value.detail == unknown_message(r.id), name
        with pytest.raises(UnknownSession) as e:
            async with store.lease(r.id, B):
                pass
        assert e.value.detail == unknown_message(r.id)
        with pytest.raises(UnknownSession) as e:  # the keyless owner is an owner like others
            await store.describe(r.id, ANONYMOUS)
        assert e.value.detail == unknown_message(r.id)
        assert await store.page(B, 10) == ([], None)
        assert (await store.describe(r.id, A)).id == r.id  # untouched by all that

    run(make, scenario)


def test_pages_list_the_owners_sessions_in_order_of_id(make, model):
    async def scenario(store: SessionStore) -> None:
        mine = sorted([(await store.create(model, A)).id for _ in range(7)])
        theirs = {(await store.create(model, B)).id for _ in range(3)}
        seen, after, pages = [], None, 0
        while True:
            records, after = await store.page(A, 3, after)
            seen += [r.id for r in records]
            pages += 1
            if after is None:
                break
            assert after == records[-1].id
        assert seen == mine and pages == 3
        assert {r.id for r in (await store.page(B, 100))[0]} == theirs
        records, after = await store.page(A, 7)
        assert [r.id for r in records] == mine and after is None
        await store.delete(mine[3], A)
        assert [r.id for r in (await store.page(A, 100))[0]] == mine[:3] + mine[4:]

    run(make, scenario)


def test_reading_is_not_use_and_a_lease_is(make, model):
    """Both stores: GET does not push back the expiry, work on the state does."""

    async def scenario(store: SessionStore) -> None:
        read, used = await store.create(model, A), await store.create(model, A)
        await asyncio.sleep(0.7)
        await store.describe(read.id, A)
        assert len((await store.page(A, 10))[0]) == 2
        async with store.lease(used.id, A):
            pass
        await asyncio.sleep(0.7)  # read: idle 1.4 s; used: 0.7 s
        with pytest.raises(UnknownSession):
            await store.describe(read.id, A)
        assert (await store.describe(used.id, A)).expires_at > time.time()
        await store.expire()
        assert [r.id for r in (await store.page(A, 10))[0]] == [used.id]
        await asyncio.sleep(1.1)
        await store.expire()
        assert await store.page(A, 10) == ([], None) and store.counts().get("m", 0) == 0
        with pytest.raises(UnknownSession):
            async with store.lease(used.id, A):
                pass

    run(make, scenario, ttl_s=1.0)


def test_delete_waits_for_the_request_in_flight(make, model):
    async def scenario(store: SessionStore) -> None:
        r = await store.create(model, A)
        order = []

        async def request() -> None:
            async with store.lease(r.id, A) as lease:
                await asyncio.sleep(0.05)
                lease.saw(["one"])
                order.append("request")

        task = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        await store.delete(r.id, A)
        order.append("deleted")
        await task
        assert order == ["request", "deleted"]
        with pytest.raises(UnknownSession):
            await store.describe(r.id, A)
        with pytest.raises(UnknownSession):
            await store.delete(r.id, A)
        assert await store.page(A, 10) == ([], None)

    run(make, scenario)


def test_the_server_cap_rejects(make, model):
    async def scenario(store: SessionStore) -> None:
        await store.create(model, A), await store.create(model, B)
        with pytest.raises(AtCapacity) as e:
            await store.create(model, ANONYMOUS)
        assert "maximum of 2 sessions (MAX_SESSIONS)" in e.value.detail
        assert e.value.retry_after == 60

    run(make, scenario, max_sessions=2)


def test_an_owners_share_is_bounded_and_freed_by_delete(make, model):
    async def scenario(store: SessionStore) -> None:
        a = [await store.create(model, A) for _ in range(2)]
        with pytest.raises(AtCapacity) as e:
            await store.create(model, A)
        assert "this API key holds its maximum of 2 sessions (MAX_SESSIONS_PER_KEY)" in (
            e.value.detail
        )
        await store.create(model, B)  # others are not affected
        for _ in range(3):  # nor is the one owner of a server without keys
            await store.create(model, ANONYMOUS)
        await store.delete(a[0].id, A)
        await store.create(model, A)

    run(make, scenario, max_per_owner=2)


def test_an_owners_share_is_freed_by_expiry(make, model):
    async def scenario(store: SessionStore) -> None:
        await store.create(model, A)
        with pytest.raises(AtCapacity):
            await store.create(model, A)
        await asyncio.sleep(0.6)
        await store.create(model, A)  # the expired one no longer counts
        assert len((await store.page(A, 10))[0]) == 1

    run(make, scenario, ttl_s=0.5, max_per_owner=1)


def test_evict_the_owners_own_least_recently_used(make, model):
    async def scenario(store: SessionStore) -> None:
        b = await store.create(model, B)  # the oldest on the server
        await asyncio.sleep(0.01)
        a1 = await store.create(model, A)
        await asyncio.sleep(0.01)
        a2 = await store.create(model, A)
        await asyncio.sleep(0.01)
        async with store.lease(a1.id, A):
            pass  # a2 is now A's least recently used
        await asyncio.sleep(0.01)
        a3 = await store.create(model, A)  # the server is full: A makes room with its own
        with pytest.raises(UnknownSession):
            await store.describe(a2.id, A)
        assert {r.id for r in (await store.page(A, 10))[0]} == {a1.id, a3.id}
        assert (await store.describe(b.id, B)).id == b.id  # B's oldest is not A's to evict
        with pytest.raises(AtCapacity) as e:  # one that holds none is refused, evicts nothing
            await store.create(model, ANONYMOUS)
        assert "maximum of 3 sessions (MAX_SESSIONS)" in e.value.detail
        assert len((await store.page(A, 10))[0]) + len((await store.page(B, 10))[0]) == 3

    run(make, scenario, max_sessions=3, policy="evict")


def test_a_key_that_creates_many_evicts_only_its_own(make, model):
    """Issue 17, row 14: MAX_SESSIONS=10, evict; key A holds 5, key B creates 10."""

    async def scenario(store: SessionStore) -> None:
        a = {(await store.create(model, A)).id for _ in range(5)}
        started = time.monotonic()
        b = []
        for _ in range(10):
            b.append((await store.create(model, B)).id)
            await asyncio.sleep(0.002)  # distinct use times (Redis keeps milliseconds)
        assert time.monotonic() - started < 5
        assert {r.id for r in (await store.page(A, 10))[0]} == a  # all five still there
        assert {r.id for r in (await store.page(B, 10))[0]} == set(b[5:])  # B's newest five

    run(make, scenario, max_sessions=10, policy="evict")


def test_an_owners_share_evicts_its_own_when_evicting(make, model):
    async def scenario(store: SessionStore) -> None:
        first = await store.create(model, A)
        await asyncio.sleep(0.01)
        second = await store.create(model, A)
        await asyncio.sleep(0.01)
        b = await store.create(model, B)
        third = await store.create(model, A)  # A's share is full: its oldest goes
        assert {r.id for r in (await store.page(A, 10))[0]} == {second.id, third.id}
        assert [r.id for r in (await store.page(B, 10))[0]] == [b.id]
        with pytest.raises(UnknownSession):
            await store.describe(first.id, A)

    run(make, scenario, max_per_owner=2, policy="evict")


def test_ids_are_random_and_long(make, model):
    async def scenario(store: SessionStore) -> None:
        ids = {(await store.create(model, A)).id for _ in range(200)}
        assert len(ids) == 200 and min(len(i) for i in ids) >= 22

    run(make, scenario)


def test_a_busy_memory_session_does_not_expire(model):
    """Memory only: a request that outlasts the TTL keeps its session (Redis: the lease)."""
    store = MemorySessionStore(ttl_s=0.2, max_sessions=10)
    s = store.new(model)

    async def hold() -> None:
        async with store.lease(s.id):
            await asyncio.sleep(0.3)
            assert store.drop_expired() == 0 and s.alive
        await asyncio.sleep(0.3)
        assert store.drop_expired() == 1 and not s.alive

    asyncio.run(hold())


def replica(server_url: str, model: Any, prefix: str, **kw: Any) -> RedisSessionStore:
    return RedisSessionStore(
        server_url,
        registry_of(model),
        100,
        1000,
        prefix=prefix,
        **kw,
    )


def test_a_redis_lease_is_renewed_by_its_holder_and_released_on_cancel(redis_server, model):
    """Issue 17, row 7: a short lease outlives no holder, yet a holder working past it keeps
    it; another replica waits a bounded time, then 503 with Retry-After."""
    prefix = f"c{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        one = replica(redis_server.url, model, prefix, lock_s=0.6, wait_s=0.2)
        two = replica(redis_server.url, model, prefix, lock_s=0.6, wait_s=0.2)
        try:
            sid = (await one.create(model, A)).id
            async with one.lease(sid, A) as lease:
                lease.saw(["one"])
                await asyncio.sleep(1.5)  # 2.5 leases long: renewed meanwhile
                started = time.monotonic()
                with pytest.raises(NotReady) as e:
                    async with two.lease(sid, A):
                        pass
                assert time.monotonic() - started < 0.5
                assert e.value.retry_after == 1
                assert "is held by another request" in e.value.detail
            # the holder's work was kept (its lease was never lost), and it let go
            assert (await two.describe(sid, A)).tokens_seen == 1
            holder = asyncio.ensure_future(hold(one, sid))
            await asyncio.sleep(0.1)
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
            async with two.lease(sid, A):  # at once: the cancelled holder released it
                pass
        finally:
            await one.close()
            await two.close()

    async def hold(store: RedisSessionStore, sid: str) -> None:
        async with store.lease(sid, A):
            await asyncio.sleep(10)

    asyncio.run(main())
