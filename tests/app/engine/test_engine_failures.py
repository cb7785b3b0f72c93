"""The engine cannot die: a failure while serving one job fails that job alone (a clear 500),
the loop goes on; if the loop stops anyway, /ready says why and requests fail fast (503)."""

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings, run_app

# The model of these tests (gru) fails on any input holding this word; its greedy words
# from "one" never do, so only the poisoned requests fail.
POISON = "seven"


def poison(app, model=None):
    """Make `model`'s forward raise whenever a row of its input holds POISON; the sizes of
    the batches it failed."""
    registry = app.state.service.registry
    lm = registry.models[model or registry.default]
    bad = lm.vocab.stoi[POISON]
    advance = lm.engine.model.advance_state
    failed = []

    def failing(x, state, lengths=None):
        if bool((x == bad).any()):
            failed.append(len(x))
            raise RuntimeError("boom: a weight went bad")
        return advance(x, state, lengths)

    lm.engine.model.advance_state = failing
    return failed


def test_a_failing_job_fails_alone_in_its_batch(store):
    app = create_app(make_settings(store, DEFAULT_MODEL="gru"))

    async def scenario(c):
        sizes = poison(app)
        good = [c.post("/v1/next-word", json={"text": "one , two"}) for _ in range(12)]
        gens = [c.post("/v1/continuation", json={"text": "one", "max_words": 4}) for _ in range(4)]
        bad = c.post("/v1/next-word", json={"text": f"one {POISON}"})
        results = await asyncio.gather(bad, *good, *gens)
        return results, await c.post("/v1/next-word", json={"text": "three"}), sizes

    (bad, *others), later, sizes = run_app(app, scenario)
    assert max(sizes) > 1 and sizes[-1] == 1  # it failed in a batch, then alone
    assert bad.status_code == 500
    assert bad.json() == {
        "detail": "the model failed on this request (RuntimeError: boom: a weight went bad)"
    }
    assert [r.status_code for r in others] == [200] * len(others)
    assert later.status_code == 200


def test_a_failing_generation_step_fails_that_continuation_only(store):
    """Words fed back during a generation can poison it: that continuation fails, the
    session stays usable, other sessions never notice."""
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru"))) as c:
        poison(c.app)
        sid = c.post("/v1/sessions", json={"text": "one , two ,"}).json()["session_id"]
        r = c.post(f"/v1/sessions/{sid}/continuation", json={"text": "six", "max_words": 3})
        assert r.status_code == 200  # "six" is not poison
        r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": POISON})
        assert r.status_code == 500 and "boom" in r.json()["detail"]
        r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "eight"})
        assert r.status_code == 200  # nothing was fed by the failed request
        assert c.get("/ready").status_code == 200


def test_a_callback_that_raises_fails_its_job_only(store):
    app = create_app(make_settings(store, DEFAULT_MODEL="gru"))

    async def scenario(c):
        lm = app.state.service.registry.models["gru"]
        engine = lm.engine
        seq, other = engine.open(), engine.open()

        def broken(_ids):
            raise ValueError("bookkeeping broke")

        ids = lm.vocab.encode("one , two")
        results = await asyncio.gather(
            seq.step(ids, 3, on_applied=broken),
            other.step(ids, 3),
            return_exceptions=True,
        )
        return results, await c.post("/v1/next-word", json={"text": "one"})

    (failed, ok), later = run_app(app, scenario)
    assert type(failed).__name__ == "EngineFailure" and "bookkeeping broke" in failed.detail
    assert len(ok) == 3
    assert later.status_code == 200


class Fatal(BaseException):
    """Something the loop does not catch: it stands for any way the loop could still end."""


def test_a_stopped_loop_means_not_ready_and_fast_failures(store):
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru"))) as c:
        engine = c.app.state.service.registry.models["gru"].engine

        def die(batch):
            raise Fatal("the loop is gone")

        engine._run = die
        r = c.post("/v1/next-word", json={"text": "one"})  # in flight when it dies: answered
        assert r.status_code == 503, r.text
        assert r.json()["detail"] == "the engine of model 'gru' stopped (Fatal: the loop is gone)"
        assert r.headers["retry-after"]
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert (
            ready.json()["problem"] == "the engine of model 'gru' stopped (Fatal: the loop is gone)"
        )
        start = time.perf_counter()
        for path, body in [
            ("/v1/next-word", {"text": "one"}),
            ("/v1/continuation", {"text": "one", "max_words": 3}),
            ("/v1/sessions", {"text": "one"}),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 503 and "stopped" in r.json()["detail"], path
        assert time.perf_counter() - start < 5  # fast, not a hang
        r = c.post("/v1/next-word", json={"text": "one", "model": "gru-cell"})
        assert r.status_code == 200  # the other models go on
    # leaving the block shut the app down; a dead loop does not make that fail


@pytest.mark.parametrize("cancelled", [True, False])
def test_shutdown_is_clean_whatever_the_loop_did(store, cancelled):
    app = create_app(make_settings(store, DEFAULT_MODEL="gru"))

    async def scenario(c):
        engine = app.state.service.registry.models["gru"].engine
        if cancelled:
            engine._task.cancel()
        else:
            engine._run = lambda batch: (_ for _ in ()).throw(Fatal("gone"))
        r = await c.post("/v1/next-word", json={"text": "one"})
        return r, await c.get("/ready")

    r, ready = run_app(app, scenario)  # the lifespan's shutdown runs and must not raise
    assert r.status_code == 503 and ready.status_code == 503
    assert ("cancelled" in r.json()["detail"]) == cancelled
