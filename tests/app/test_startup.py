import json
import re
import resource
import time

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import Settings
from app.engine.registry import NoUsableModel
from app.main import create_app
from model_store import ModelConfig, build_model, save_checkpoint
from tests.app.conftest import make_settings
from training.data import load_data


@pytest.fixture
def mixed_store(tmp_path):
    vocab = load_data().vocab
    save_checkpoint(tmp_path, "good", build_model(ModelConfig("gru")), vocab)
    bad = save_checkpoint(tmp_path, "bad", build_model(ModelConfig("gru-cell")), vocab)
    weights = bad.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    return tmp_path, weights


def test_a_bad_checkpoint_is_skipped_and_named(mixed_store):
    store, weights = mixed_store
    with TestClient(create_app(make_settings(store))) as c:
        ready = c.get("/ready").json()
        assert ready["models"] == ["good"]
        # named by its place in the store; the digests cut short (the log has them whole)
        (skipped,) = ready["skipped"]
        assert skipped.startswith(f"{weights.relative_to(store)}: sha256 is ")
        assert str(store) not in skipped and not re.search("[0-9a-f]{13}", skipped)
        assert c.get("/v1/models").json()["default"] == "good"
        assert c.get("/v1/models/bad").status_code == 404


def test_gru_copy_is_the_default_when_loaded(store):
    with TestClient(create_app(make_settings(store))) as c:
        assert c.get("/v1/models").json()["default"] == "gru-copy"
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru-cell"))) as c:
        assert c.get("/v1/models").json()["default"] == "gru-cell"  # the setting still wins


def test_refuses_to_start_when_nothing_is_usable(mixed_store, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with (
        pytest.raises(NoUsableModel, match="holds no checkpoints"),
        TestClient(create_app(make_settings(empty))),
    ):
        pass
    store, _ = mixed_store
    with (
        pytest.raises(NoUsableModel, match="DEFAULT_MODEL='bad' is not among"),
        TestClient(create_app(make_settings(store, DEFAULT_MODEL="bad"))),
    ):
        pass


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"MAX_SESSIONS": "0"}, "MAX_SESSIONS"),
        ({"SESSION_CAP_POLICY": "drop"}, "SESSION_CAP_POLICY"),
        ({"SESSION_TTL_SECONDS": "-1"}, "SESSION_TTL_SECONDS"),
        ({"PORT": "70000"}, "PORT"),
        ({"MAX_CONNECTIONS": str(10**9)}, "MAX_CONNECTIONS"),  # past the open-file limit
        ({"HEADER_TIMEOUT_SECONDS": "0"}, "HEADER_TIMEOUT_SECONDS"),
    ],
)
def test_bad_settings_are_refused_at_start(monkeypatch, env, field):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STORE", str(tmp_path))
    monkeypatch.setenv("MAX_WORDS", "7")
    s = Settings()
    assert s.STORE == tmp_path and s.MAX_WORDS == 7


def test_the_hand_written_cell_is_scripted_by_default(client):
    import torch

    model = client.app.state.service.registry.models["gru-custom"].checkpoint.model
    assert isinstance(model.rnn, torch.jit.ScriptModule)


def test_checkpoints_made_to_hurt_are_skipped_while_the_others_serve(tmp_path):
    """Issue 17, row 11: absurd sizes, a deeply nested meta.json and NaN weights (with a
    matching sha256) each cost their own checkpoint only, with its file and problem."""
    vocab = load_data().vocab
    save_checkpoint(tmp_path, "good", build_model(ModelConfig("gru")), vocab)
    huge = save_checkpoint(tmp_path, "huge", build_model(ModelConfig("gru")), vocab)
    meta = json.loads((huge.path / "meta.json").read_text())
    meta["config"]["hidden"] = 200_000  # 480 GB, were it allocated
    (huge.path / "meta.json").write_text(json.dumps(meta))
    deep = save_checkpoint(tmp_path, "deep", build_model(ModelConfig("gru")), vocab)
    (deep.path / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    nan = build_model(ModelConfig("gru"))
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    save_checkpoint(tmp_path, "nan", nan, vocab)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.monotonic()
    with TestClient(create_app(make_settings(tmp_path))) as c:
        took = time.monotonic() - started
        ready = c.get("/ready").json()
        assert ready["models"] == ["good"]
        assert sorted(ready["skipped"]) == [
            "deep/1/meta.json: not valid JSON (nested too deeply)",
            "huge/1/model.safetensors: tensor 'i_h.weight' has shape (40, 56), "
            "expected (40, 200000)",
            "nan/1/model.safetensors: tensor 'i_h.weight' holds non-finite values "
            "(NaN or infinity)",
        ]
        r = c.post("/v1/next-word", json={"text": "one ,"})
        assert r.status_code == 200 and r.json()["model"] == "good"
        assert all(w["prob"] is not None for w in r.json()["next"])
    assert took < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024
