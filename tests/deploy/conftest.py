"""deploy/k8s rendered once per test session, by the same code as `make lint`
(scripts/k8s_validate.py): every overlay, and each optional component on one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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
