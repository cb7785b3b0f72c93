import asyncio
from types import SimpleNamespace

import pytest
import torch

from app.core.errors import AtCapacity, UnknownSession
from app.engine.slots import SlotPool
from app.serving.sessions import MemorySessionStore as SessionStore
from model_store import StateSpec


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def model():
    pool = SlotPool({"h": StateSpec((1, 4), torch.float32)}, torch.device("cpu"), chunk=8)
    return SimpleNamespace(name="m", batcher=SimpleNamespace(slots=pool))


def test_ttl_counts_from_last_use(model):
    clock = Clock()
    store = SessionStore(ttl_s=10, max_sessions=10, clock=clock)
    a, b = store.new(model), store.new(model)
    clock.now += 6
    store.get(a.id)  # a used at +6
    clock.now += 5  # b idle 11 s, a idle 5 s
    assert store.drop_expired() == 1
    assert [s.id for s in store] == [a.id]
    assert model.batcher.slots.in_use == 1  # b's slot went back
    with pytest.raises(UnknownSession):
        store.get(b.id)
    clock.now += 10
    with pytest.raises(UnknownSession, match="expired after 10 s idle"):
        store.get(a.id)
    assert len(store) == 0 and model.batcher.slots.in_use == 0


def test_a_busy_session_does_not_expire(model):
    clock = Clock()
    store = SessionStore(ttl_s=1, max_sessions=10, clock=clock)
    s = store.new(model)

    async def hold():
        async with s.lock:
            clock.now += 5
            assert store.drop_expired() == 0 and store.get(s.id) is s
        clock.now += 5
        assert store.drop_expired() == 1 and not s.alive

    asyncio.run(hold())


def test_reject_or_evict_the_least_recently_used(model):
    clock = Clock()
    full = SessionStore(ttl_s=100, max_sessions=2, clock=clock)
    full.new(model), full.new(model)
    with pytest.raises(AtCapacity, match="maximum of 2 sessions"):
        full.new(model)

    store = SessionStore(ttl_s=100, max_sessions=2, policy="evict", clock=clock)
    a, b = store.new(model), store.new(model)
    clock.now += 1
    store.touch(a)  # b is now the least recently used
    c = store.new(model)
    assert not b.alive and {s.id for s in store} == {a.id, c.id}


def test_ids_are_random_and_long(model):
    store = SessionStore(ttl_s=100, max_sessions=1000)
    ids = {store.new(model).id for _ in range(500)}
    assert len(ids) == 500 and min(len(i) for i in ids) >= 22


def test_delete_waits_for_the_requests_in_flight(model):
    store = SessionStore(ttl_s=100, max_sessions=10)
    s = store.new(model)
    order = []

    async def request():
        async with s.lock:
            await asyncio.sleep(0.01)
            order.append("request")

    async def main():
        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        await store.delete(s.id)
        order.append("deleted")
        await task

    asyncio.run(main())
    assert order == ["request", "deleted"] and not s.alive
