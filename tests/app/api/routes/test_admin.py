"""Model versions at run time: the admin API, pinned and split addressing, sessions that stay
on their version, draining, the quality gate, replicas and the store's poller."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import time
import weakref
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from model_store import find_checkpoint, load_checkpoint, save_checkpoint
from tests.app.conftest import make_settings
from training.data import load_data
from training.loop import RECIPES, train

ADMIN = "admin-key-0123456789abcdef"
USER = "user-key-0123456789abcdef"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_USER = {"Authorization": f"Bearer {USER}"}


@pytest.fixture(scope="module")
def second_model() -> Any:
    """A gru trained 1 epoch: another version whose answers differ from the store's."""
    data = load_data()
    config = replace(RECIPES["gru"], epochs=1, device="cpu", seed=7)
    return train(config, data, progress=False, log=lambda _: None).model, data.vocab


@pytest.fixture
def vstore(store: Path, tmp_path: Path) -> Path:
    """A store of one model, `gru` version 1 (the suite's trained one)."""
    root = tmp_path / "store"
    shutil.copytree(store / "gru", root / "gru")
    return root


def accuracy_of(root: Path, version: int) -> float:
    return float(load_checkpoint(find_checkpoint(root, "gru", version)).valid_accuracy or 0)


def add_version(root: Path, second_model: Any, accuracy: float) -> int:
    """A new gru version with other weights, its recorded valid accuracy `accuracy` (the
    quality gate reads the record, so a test sets it)."""
    model, vocab = second_model
    metrics = [
        {"epoch": 1, "train_loss": 1.0, "valid_loss": 1.0, "accuracy": accuracy, "seconds": 1.0}
    ]
    return save_checkpoint(root, "gru", model, vocab, metrics=metrics).version


def admin_client(root: Path, **kw: Any) -> TestClient:
    settings = make_settings(root, ADMIN_API_KEYS=ADMIN, API_KEYS=USER, DEFAULT_MODEL="gru", **kw)
    return TestClient(create_app(settings))


def next_word(c: TestClient, model: str, text: str = "one , two ,") -> httpx.Response:
    return c.post("/v1/next-word", json={"text": text, "model": model}, headers=AS_USER)


def test_the_admin_api_is_off_without_admin_keys_and_takes_only_admin_keys(vstore):
    with TestClient(create_app(make_settings(vstore, API_KEYS=USER))) as c:
        assert c.get("/admin/models", headers=AS_USER).status_code == 404
        assert "/admin/models" not in c.get("/openapi.json", headers=AS_USER).json()["paths"]
    with admin_client(vstore) as c:
        r = c.get("/admin/models")
        assert r.status_code == 401 and "needs an API key" in r.json()["detail"]
        r = c.get("/admin/models", headers=AS_USER)
        assert r.status_code == 403, r.text
        assert "user's API key" in r.json()["detail"] and USER not in r.text
        r = c.get("/admin/models", headers={"Authorization": "Bearer not-a-key-0123456789"})
        assert r.status_code == 401 and r.json()["detail"] == "the API key is not valid"
        r = c.get("/admin/models", headers=AS_ADMIN)
        assert r.status_code == 200
        body = r.json()
        assert body["default"] == "gru" and body["fleet"] is None and body["problem"] is None
        [gru] = body["models"]
        assert (gru["name"], gru["default"], gru["previous"], gru["split"]) == (
            "gru",
            1,
            None,
            None,
        )
        # an admin key is not a user's: /v1 refuses it
        assert c.get("/v1/models", headers=AS_ADMIN).status_code == 401
        paths = c.get("/openapi.json", headers=AS_USER).json()["paths"]
        assert "/admin/models/{name}/promote" in paths


def test_a_key_may_not_be_both_an_admin_and_a_users(vstore):
    with pytest.raises(ValueError, match="distinct"):
        make_settings(vstore, ADMIN_API_KEYS=ADMIN, API_KEYS=f"{USER},{ADMIN}")


def test_load_pin_split_promote_and_roll_back(vstore, second_model):
    with admin_client(vstore) as c:
        v2 = add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)
        listed = c.get("/admin/store", headers=AS_ADMIN).json()["versions"]
        assert [(v["version"], v["loaded"]) for v in listed] == [(1, True), (v2, False)]
        r = c.post("/admin/models/gru/load", json={"version": v2}, headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        versions = r.json()["versions"]
        assert [(v["version"], v["status"], v["share"]) for v in versions] == [
            (1, "ready", 100.0),
            (2, "ready", 0.0),
        ]
        # loaded, not yet serving NAME; pinned, it answers
        one, two = next_word(c, "gru"), next_word(c, "gru@2")
        assert one.json()["version"] == 1 and one.headers["x-model-version"] == "gru@1"
        assert two.json()["version"] == 2 and two.headers["x-model-version"] == "gru@2"
        assert one.json()["next"] != two.json()["next"]  # other weights, other answers
        listed = c.get("/v1/models", headers=AS_USER).json()
        assert [m["id"] for m in listed["data"]] == ["gru", "gru@2"]
        r = next_word(c, "gru@9")
        assert r.status_code == 404 and "no version 9 loaded" in r.json()["detail"]
        r = next_word(c, "gru@x")
        assert r.status_code == 404 and "positive whole number" in r.json()["detail"]

        # a canary: 10% of new work to version 2, measured over 2,000 requests
        r = c.put("/admin/models/gru/split", json={"shares": {"1": 90, "2": 10}}, headers=AS_ADMIN)
        assert r.status_code == 200 and r.json()["split"] == {"1": 90, "2": 10}
        got = Counter(next_word(c, "gru").json()["version"] for _ in range(2000))
        assert abs(got[2] / 2000 - 0.10) <= 0.03, got
        r = c.put("/admin/models/gru/split", json={"shares": {"1": 90, "2": 5}}, headers=AS_ADMIN)
        assert r.status_code == 409 and "sum to 100" in r.json()["detail"]
        long = {"x" * 5000: 100}  # a key that is no version: named, cut short
        r = c.put("/admin/models/gru/split", json={"shares": long}, headers=AS_ADMIN)
        assert r.status_code == 409 and "whole numbers" in r.json()["detail"]
        assert len(r.text) < 300
        r = c.put("/admin/models/gru/split", json={"shares": {"1": 50, "3": 50}}, headers=AS_ADMIN)
        assert r.status_code == 404 and "no version 3 loaded" in r.json()["detail"]

        r = c.post("/admin/models/gru/promote", json={"version": 2}, headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        assert (r.json()["default"], r.json()["previous"], r.json()["split"]) == (2, 1, None)
        assert next_word(c, "gru").json()["version"] == 2
        c_ = c.post("/v1/completions", json={"model": "gru", "prompt": "one ,"}, headers=AS_USER)
        assert c_.json()["model"] == "gru" and c_.headers["x-model-version"] == "gru@2"
        c_ = c.post("/v1/completions", json={"model": "gru@1", "prompt": "one ,"}, headers=AS_USER)
        assert c_.json()["model"] == "gru@1" and c_.headers["x-model-version"] == "gru@1"

        r = c.post("/admin/models/gru/rollback", headers=AS_ADMIN)
        assert (r.json()["default"], r.json()["previous"]) == (1, 2)
        assert next_word(c, "gru").json()["version"] == 1
        assert c.get("/ready").status_code == 200


def test_sessions_stay_on_their_version_and_move_only_by_a_reset(vstore, second_model):
    with admin_client(vstore) as c:
        add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)
        c.post("/admin/models/gru/load", json={"version": 2}, headers=AS_ADMIN)
        old = c.post("/v1/sessions", json={"text": "one , two ,"}, headers=AS_USER).json()
        assert (old["model"], old["version"]) == ("gru", 1)
        c.post("/admin/models/gru/promote", json={"version": 2}, headers=AS_ADMIN)
        new = c.post("/v1/sessions", json={"text": "one , two ,"}, headers=AS_USER).json()
        assert new["version"] == 2
        for sid, version in ((old["session_id"], 1), (new["session_id"], 2)):
            r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "three ,"}, headers=AS_USER)
            assert r.json()["version"] == version, r.text
            assert r.headers["x-model-version"] == f"gru@{version}"
            r = c.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 2}, headers=AS_USER)
            assert r.json()["version"] == version
        # a completion on a session names the session's version, or is refused another
        sid = old["session_id"]
        r = c.post(
            "/v1/completions",
            json={"model": "gru", "prompt": "four ,", "session_id": sid},
            headers=AS_USER,
        )
        assert r.status_code == 200 and r.headers["x-model-version"] == "gru@1", r.text
        r = c.post(
            "/v1/completions",
            json={"model": "gru@2", "prompt": "four ,", "session_id": sid},
            headers=AS_USER,
        )
        assert r.status_code == 400 and "stays on the version" in r.json()["error"]["message"]
        # a reset with a model moves it
        r = c.post(f"/v1/sessions/{sid}/reset", json={"model": "gru"}, headers=AS_USER)
        assert (r.json()["version"], r.json()["tokens_seen"]) == (2, 0)
        r = c.post(f"/v1/sessions/{sid}/reset", json={"model": "gru@7"}, headers=AS_USER)
        assert r.status_code == 404
        assert c.get(f"/v1/sessions/{sid}", headers=AS_USER).json()["version"] == 2


def test_the_quality_gate(vstore, second_model):
    with admin_client(vstore) as c:
        best = accuracy_of(vstore, 1)
        worse = add_version(vstore, second_model, best - 0.05)
        c.post("/admin/models/gru/load", json={"version": worse}, headers=AS_ADMIN)
        r = c.post("/admin/models/gru/promote", json={"version": worse}, headers=AS_ADMIN)
        assert r.status_code == 409
        detail = r.json()["detail"]
        assert f"{best - 0.05:.4f}" in detail and f"{best:.4f}" in detail and "force" in detail
        assert next_word(c, "gru").json()["version"] == 1
        r = c.post(
            "/admin/models/gru/promote", json={"version": worse, "force": True}, headers=AS_ADMIN
        )
        assert r.status_code == 200 and r.json()["default"] == worse


def test_a_version_that_fails_to_load_or_warm_up_never_takes_traffic(
    vstore, second_model, monkeypatch
):
    with admin_client(vstore) as c:
        bad = add_version(vstore, second_model, 0.99)
        weights = vstore / "gru" / str(bad) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # sha256 no longer matches
        r = c.post("/admin/models/gru/load", json={"version": bad}, headers=AS_ADMIN)
        assert r.status_code == 409 and f"gru@{bad} was refused" in r.json()["detail"]
        assert "sha256" in r.json()["detail"]
        good = add_version(vstore, second_model, 0.99)

        import app.engine.registry as registry

        async def broken(lm: Any) -> None:
            raise RuntimeError("no step")

        monkeypatch.setattr(registry, "warm_up", broken)
        r = c.post("/admin/models/gru/load", json={"version": good}, headers=AS_ADMIN)
        assert r.status_code == 409 and "failed its warm-up step" in r.json()["detail"]
        versions = c.get("/admin/models", headers=AS_ADMIN).json()["models"][0]["versions"]
        assert [v["version"] for v in versions] == [1]
        assert next_word(c, "gru").json()["version"] == 1
        assert next_word(c, f"gru@{good}").status_code == 404
        r = c.post("/admin/models/nope/load", headers=AS_ADMIN)
        assert r.status_code == 404 and "no checkpoint named 'nope'" in r.json()["detail"]


def test_unload_drains_then_frees_the_version_and_410s_its_sessions(vstore, second_model):
    with admin_client(vstore) as c:
        add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)
        c.post("/admin/models/gru/load", json={"version": 2}, headers=AS_ADMIN)
        r = c.post("/admin/models/gru/unload", json={"version": 1}, headers=AS_ADMIN)
        assert r.status_code == 409 and "is the default" in r.json()["detail"]
        made = c.post(
            "/v1/sessions", json={"model": "gru@2", "text": "one ,"}, headers=AS_USER
        ).json()
        sid = made["session_id"]
        lm = c.app.state.service.registry.entries["gru"].versions[2]
        weights = weakref.ref(lm.checkpoint.model)
        del lm
        r = c.post(
            "/admin/models/gru/unload", json={"version": 2, "grace_seconds": 0.3}, headers=AS_ADMIN
        )
        assert r.status_code == 200
        assert [v["status"] for v in r.json()["versions"]] == ["ready", "draining"]
        # draining: no new work pinned on it, but its session is served
        r = next_word(c, "gru@2")
        assert r.status_code == 410 and "being unloaded" in r.json()["detail"]
        r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two ,"}, headers=AS_USER)
        assert r.status_code == 200 and r.json()["version"] == 2
        time.sleep(0.6)  # the grace period ends: the version goes, its session with it
        c.portal.call(c.app.state.service.registry.drained)
        r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "three ,"}, headers=AS_USER)
        assert r.status_code == 410, r.text
        assert "gru@2 was unloaded" in r.json()["detail"]
        assert next_word(c, "gru@2").status_code == 410
        gc.collect()
        assert weights() is None  # its memory is freed
        versions = c.get("/admin/models", headers=AS_ADMIN).json()["models"][0]["versions"]
        assert [v["version"] for v in versions] == [1]
        # it can be loaded again
        r = c.post("/admin/models/gru/load", json={"version": 2}, headers=AS_ADMIN)
        assert r.status_code == 200 and next_word(c, "gru@2").json()["version"] == 2


def test_polling_loads_complete_new_versions_and_ignores_half_written_ones(vstore, second_model):
    with admin_client(vstore, MODEL_STORE_POLL_SECONDS=0.1, MODEL_STORE_POLL_POLICY="latest") as c:
        half = vstore / "gru" / ".tmp-0123"  # the store's own way of writing: never listed
        half.mkdir()
        (half / "meta.json").write_text("{")
        by_hand = vstore / "gru" / "2"  # copied in by hand, its weights not there yet
        by_hand.mkdir()
        shutil.copy(vstore / "gru" / "1" / "meta.json", by_hand / "meta.json")
        time.sleep(0.5)
        assert next_word(c, "gru").json()["version"] == 1
        assert c.get("/ready").status_code == 200
        shutil.rmtree(by_hand)
        v = add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)
        deadline = time.monotonic() + 10
        while next_word(c, "gru").json()["version"] != v and time.monotonic() < deadline:
            time.sleep(0.1)
        assert next_word(c, "gru").json()["version"] == v


def test_with_redis_replicas_converge_and_sessions_keep_their_version_across_a_restart(
    vstore, second_model, redis_server
):
    redis = {
        "SESSION_BACKEND": "redis",
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": f"adm{time.monotonic_ns()}",
    }
    add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)  # v2: the latest

    async def scenario() -> None:
        apps = [create_app(make_settings(vstore, ADMIN_API_KEYS=ADMIN, **redis)) for _ in "ab"]
        async with (
            apps[0].router.lifespan_context(apps[0]),
            apps[1].router.lifespan_context(apps[1]),
        ):
            a, b = (
                httpx.AsyncClient(transport=httpx.ASGITransport(app=x), base_url="http://t")
                for x in apps
            )
            # both started on the store's latest (2): the fleet's first state says so
            assert (await b.post("/v1/next-word", json={"text": "one ,"})).json()["version"] == 2
            r = await a.post("/admin/models/gru/load", json={"version": 1}, headers=AS_ADMIN)
            assert r.status_code == 200
            forced = {"version": 1, "force": True}  # below v2's recorded accuracy: the gate
            r = await a.post("/admin/models/gru/promote", json=forced, headers=AS_ADMIN)
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = (await b.post("/v1/next-word", json={"text": "one ,"})).json()
                if got["version"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert got["version"] == 1  # b applied a's change
            state = (await b.get("/admin/models", headers=AS_ADMIN)).json()
            assert (state["models"][0]["default"], state["models"][0]["previous"]) == (1, 2)
            assert state["problem"] is None and (await b.get("/ready")).status_code == 200
            # a session made on b's v1 is served by a, on v1
            made = (await b.post("/v1/sessions", json={"text": "one ,"})).json()
            r = await a.post(f"/v1/sessions/{made['session_id']}/next-word", json={"text": "two ,"})
            assert r.json()["version"] == 1
            pinned = (await a.post("/v1/sessions", json={"model": "gru@2", "text": "one ,"})).json()
            await a.aclose()
            await b.aclose()
        # a restart: the fleet's state is applied again, sessions keep their versions
        app = create_app(make_settings(vstore, ADMIN_API_KEYS=ADMIN, **redis))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            deadline = time.monotonic() + 10
            while (await c.get("/ready")).status_code != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for sid, version in ((made["session_id"], 1), (pinned["session_id"], 2)):
                r = await c.post(f"/v1/sessions/{sid}/next-word", json={"text": "three ,"})
                assert r.json()["version"] == version, r.text
                listed = (await c.get(f"/v1/sessions/{sid}")).json()
                assert listed["version"] == version
            got = (await c.post("/v1/next-word", json={"text": "one ,"})).json()
            assert got["version"] == 1  # the fleet's default, not the store's latest

    asyncio.run(scenario())


def test_a_fleet_state_this_replica_cannot_serve_makes_it_unready(vstore, redis_server):
    """A replica whose store lacks a version the fleet names says so on /ready (503)."""
    prefix = f"adm{time.monotonic_ns()}"
    import redis as sync_redis

    state = {
        "default": "gru",
        "models": {"gru": {"versions": [1, 5], "default": 5, "previous": 1, "split": None}},
        "generation": 1,  # Redis's clock when it was written (microseconds)
    }
    sync_redis.Redis.from_url(redis_server.url).set(f"{prefix}:models:state", json.dumps(state))
    settings = make_settings(
        vstore,
        ADMIN_API_KEYS=ADMIN,
        SESSION_BACKEND="redis",
        REDIS_URL=redis_server.url,
        REDIS_PREFIX=prefix,
    )
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 10
        while c.get("/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/ready")
        assert r.status_code == 503 and "gru" in r.json()["problem"], r.text
        assert "gru@5: not in this replica's store" in r.json()["problem"]
        assert c.post("/v1/next-word", json={"text": "one ,"}).json()["version"] == 1


def test_with_redis_a_version_drains_once_its_last_session_is_deleted(
    vstore, second_model, redis_server
):
    """Redis sessions are not in the process: the drain looks them up by version."""
    add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)
    with admin_client(
        vstore,
        SESSION_BACKEND="redis",
        REDIS_URL=redis_server.url,
        REDIS_PREFIX=f"adm{time.monotonic_ns()}",
    ) as c:
        assert next_word(c, "gru").json()["version"] == 2
        c.post("/admin/models/gru/load", json={"version": 1}, headers=AS_ADMIN)
        sid = c.post(
            "/v1/sessions", json={"model": "gru@1", "text": "one ,"}, headers=AS_USER
        ).json()["session_id"]
        r = c.post(
            "/admin/models/gru/unload", json={"version": 1, "grace_seconds": 60}, headers=AS_ADMIN
        )
        assert r.status_code == 200
        time.sleep(1.5)  # its session holds it
        r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two ,"}, headers=AS_USER)
        assert r.json()["version"] == 1
        started = time.monotonic()
        assert c.delete(f"/v1/sessions/{sid}", headers=AS_USER).status_code == 204
        while len(c.get("/admin/models", headers=AS_ADMIN).json()["models"][0]["versions"]) > 1:
            assert time.monotonic() - started < 10, "v1 still draining 10 s after its session"
            time.sleep(0.1)


def test_work_in_flight_when_the_grace_ends_is_answered_then_the_session_ends(vstore, second_model):
    add_version(vstore, second_model, accuracy_of(vstore, 1) + 0.01)
    app = create_app(make_settings(vstore, ADMIN_API_KEYS=ADMIN, DEFAULT_MODEL="gru"))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                loaded = await c.post(  # the store's latest (2) serves; 1 beside it
                    "/admin/models/gru/load", json={"version": 1}, headers=AS_ADMIN
                )
                assert loaded.status_code == 200
                made = await c.post("/v1/sessions", json={"model": "gru@1", "text": "one ,"})
                sid = made.json()["session_id"]
                engine = app.state.service.registry.entries["gru"].versions[1].engine
                long = asyncio.create_task(
                    c.post(f"/v1/sessions/{sid}/continuation", json={"max_words": 200})
                )
                while not engine.queued:  # its generation is under way
                    await asyncio.sleep(0)
                r = await c.post(
                    "/admin/models/gru/unload",
                    json={"version": 1, "grace_seconds": 0},
                    headers=AS_ADMIN,
                )
                assert r.status_code == 200
                done = await long
                assert done.status_code == 200 and len(done.json()["words"]) == 200
                await app.state.service.registry.drained()
                late = await c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two ,"})
                assert late.status_code == 410 and "gru@1 was unloaded" in late.json()["detail"]

    asyncio.run(scenario())
