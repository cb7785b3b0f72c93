"""deploy/k8s rendered once per test session, by the same code as `make lint`
(scripts/k8s_validate.py): every overlay, and each optional component on one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from launchers import AppProcess
from model_store import ModelConfig, build_model, save_checkpoint
from training.data import load_data

REPO = Path(__file__).resolve().parents[2]


def load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_validate", REPO / "scripts/k8s_validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validator = load_validator()


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict[str, Any]]]:
    """Each render's objects by the render's name (validator.RENDERS)."""
    return {
        name: validator.render(kustomization, components)
        for name, (kustomization, components) in validator.RENDERS.items()
    }


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One untrained model: what it answers does not matter here, only what is counted."""
    root = tmp_path_factory.mktemp("store")
    vocab = load_data().vocab
    torch.manual_seed(0)
    model = build_model(ModelConfig("gru", vocab_size=len(vocab), hidden=8)).eval()
    save_checkpoint(root, "gru", model, vocab)
    return root


@pytest.fixture(scope="session")
def scraped(tiny_store: Path) -> str:
    """/metrics of a real server (`python -m app`) after the traffic the panels chart."""
    with AppProcess(tiny_store, SSE_FLUSH_MS="0") as app, app.client() as c:
        assert c.post("/v1/next-word", json={"text": "one , two"}).status_code == 200
        assert c.post("/v1/next-word", json={"text": "eleventy"}).status_code == 422
        sid = c.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
        assert c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"}).status_code == 200
        body = {"text": "one ,", "max_words": 3, "stream": True}
        with c.stream("POST", "/v1/continuation", json=body) as r:
            assert r.status_code == 200 and r.read().count(b"data:") == 4
        text = c.get("/metrics").text
    return text
