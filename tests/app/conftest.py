"""A small real model store (four variants, a few epochs) and clients of the app over it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from launchers import TEST_DEVICE
from model_store import VARIANTS as REGISTRY
from model_store import save_checkpoint
from training.data import load_data
from training.loop import RECIPES, train

VARIANTS = tuple(sorted(REGISTRY))  # every variant, by name: as GET /v1/models lists them
T = TypeVar("T")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every variant trained 6 epochs: good enough that greedy continuations mean something."""
    root = tmp_path_factory.mktemp("store")
    data = load_data()
    for variant in VARIANTS:
        config = replace(RECIPES[variant], epochs=6, device="cpu")
        result = train(config, data, progress=False, log=lambda _: None)
        save_checkpoint(root, variant, result.model, data.vocab, metrics=result.metrics)
    return root


def make_settings(store: Path, **overrides: Any) -> Settings:
    """The app's settings in the tests: on TEST_DEVICE (launchers.TEST_DEVICE: the CPU unless
    the environment says cuda, as scripts/gpu-check.sh does), access log off."""
    return Settings(**{"STORE": store, "DEVICE": TEST_DEVICE, "ACCESS_LOG": False, **overrides})


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of a session store: in-process, or a real Redis (keys of this test alone)."""
    if request.param == "memory":
        return {"SESSION_BACKEND": "memory"}
    server = request.getfixturevalue("redis_server")
    return {
        "SESSION_BACKEND": "redis",
        "REDIS_URL": server.url,
        "REDIS_PREFIX": f"t{uuid.uuid4().hex[:12]}",
    }


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi"])
def settings(store: Path, backend: dict[str, Any], request: pytest.FixtureRequest) -> Settings:
    """Every route test runs with the hot routes served by the fast path and by FastAPI, and
    with each session store. The default model is pinned to `gru`, which the tests name
    (test_startup checks that the registry's own choice is gru-copy)."""
    return make_settings(store, FAST_PATH=request.param, DEFAULT_MODEL="gru", **backend)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def run_app(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run the app (lifespan included) in this thread's own event loop and drive it with an
    async client, so concurrent requests really share the engine's batches."""

    async def main() -> T:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await scenario(c)

    return asyncio.run(main())
