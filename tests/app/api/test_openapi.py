"""The OpenAPI document states the bounds the server enforces, in JSON Schema's own words
(issue 17, row 9): `minimum`/`maximum`, never pydantic's `ge`/`le`, and exact integers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings

NOT_JSON_SCHEMA = {"ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"}


@pytest.fixture(scope="module")
def client(store) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru"))) as c:
        yield c


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def test_bounds_are_json_schema_and_integers_are_exact(client):
    spec = client.get("/openapi.json").json()
    for path, node in walk(spec):
        if "properties" in path.rsplit("/", 2)[-2:] or path.endswith("/examples"):
            continue  # a property may be called anything
        assert not NOT_JSON_SCHEMA & set(node), f"{path}: {sorted(NOT_JSON_SCHEMA & set(node))}"
        if node.get("type") == "integer":
            for key in ("minimum", "maximum"):
                assert type(node.get(key, 0)) is int, f"{path}: {key} is {node[key]!r}"
    props = spec["components"]["schemas"]["ContinuationRequest"]["properties"]
    (seed,) = [arm for arm in props["seed"]["anyOf"] if arm.get("type") == "integer"]
    assert (seed["minimum"], seed["maximum"]) == (0, 2**63 - 1)
    (top_k,) = [arm for arm in props["top_k"]["anyOf"] if arm.get("type") == "integer"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 40)


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("seed", 2**63 - 1, 200),  # the document's maximum is accepted
        ("seed", 2**63, 422),  # one past it is not, as the document says
        ("seed", 2.7e22, 422),
        ("seed", -1, 422),
        ("top_k", 40, 200),
        ("top_k", 41, 422),
        ("top_k", 0, 422),
    ],
)
def test_what_the_document_bounds_the_server_bounds_alike(client, field, value, status):
    body = {"text": "one ,", "max_words": 2, "temperature": 1, field: value}
    for path in ("/v1/continuation", "/v1/sessions/{id}/continuation"):
        if "{id}" in path:
            path = path.format(id=client.post("/v1/sessions", json={}).json()["session_id"])
        r = client.post(path, json=body)
        assert r.status_code == status, r.text
        if status == 422:
            assert r.json()["detail"][0]["loc"] == ["body", field]
