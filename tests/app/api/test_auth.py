"""API keys and session ownership: the reproductions of "anyone can take over anyone's
session", on both session stores and both request paths."""

import logging

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import Settings
from app.core.security import owner_of
from app.main import create_app
from tests.app.conftest import make_settings

KEY1, KEY2 = "key-one-0123456789abcdef", "key-two-0123456789abcdef"
AUTH1 = {"Authorization": f"Bearer {KEY1}"}
AUTH2 = {"Authorization": f"Bearer {KEY2}"}


@pytest.fixture
def keyed(settings):
    """The route suite's settings (both stores, both paths) with two API keys."""
    return settings.model_copy(update={"API_KEYS": Settings(API_KEYS=f"{KEY1}, {KEY2}").API_KEYS})


@pytest.fixture
def client(keyed):
    with TestClient(create_app(keyed)) as c:
        yield c


def new(client, headers, **body):
    r = client.post("/v1/sessions", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


V1 = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/gru", None),
    ("POST", "/v1/next-word", {"text": "one"}),
    ("POST", "/v1/continuation", {"text": "one", "max_words": 2}),
    ("POST", "/v1/tokenize", {"prompt": "one"}),
    ("POST", "/v1/detokenize", {"tokens": [12]}),
    ("POST", "/v1/sessions", {}),
    ("GET", "/v1/sessions", None),
    ("GET", "/v1/sessions/SID", None),
    ("POST", "/v1/sessions/SID/next-word", {"text": "one"}),
    ("POST", "/v1/sessions/SID/continuation", {"text": "one", "max_words": 2}),
    ("POST", "/v1/sessions/SID/reset", None),
    ("DELETE", "/v1/sessions/SID", None),
]


def test_every_v1_route_needs_a_valid_key(client):
    sid = new(client, AUTH1, text="one")
    for method, path, body in V1:
        url = path.replace("SID", sid)
        for headers, detail, challenge in [
            (
                {},
                "this server needs an API key: send it as 'Authorization: Bearer <key>'",
                "Bearer",
            ),
            (
                {"Authorization": f"Basic {KEY1}"},
                "the Authorization header must be 'Bearer <key>'",
                'Bearer error="invalid_request"',
            ),
            (
                {"Authorization": "Bearer not-a-key-of-this-server"},
                "the API key is not valid",
                'Bearer error="invalid_token"',
            ),
        ]:
            r = client.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json() == {"detail": detail}
            assert r.headers["www-authenticate"] == challenge
        r = client.request(method, url, json=body, headers=AUTH1)
        assert r.status_code in (200, 201, 204), (method, path, r.text)
    # operations stay open by default
    for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_a_second_key_cannot_touch_the_first_keys_session(client):
    sid = new(client, AUTH1, text="one , two")
    other = new(client, AUTH2)
    unknown = f"no session {sid!r}: it never existed, was deleted or expired"
    for method, path, body in V1[8:]:  # the session routes
        r = client.request(method, path.replace("SID", sid), json=body, headers=AUTH2)
        assert r.status_code == 404, (method, path)
        assert r.json() == {"detail": unknown}
    # not listed for the second key; untouched for the first
    listed = client.get("/v1/sessions", headers=AUTH2).json()
    assert [s["session_id"] for s in listed["sessions"]] == [other]
    mine = client.get(f"/v1/sessions/{sid}", headers=AUTH1).json()
    assert mine["tokens_seen"] == 3 and mine["last_words"] == ["one", ",", "two"]
    assert [
        s["session_id"] for s in client.get("/v1/sessions", headers=AUTH1).json()["sessions"]
    ] == [sid]
    # the same 404 as an id that never existed: nothing tells the two apart
    r = client.get("/v1/sessions/AAAAAAAAAAAAAAAAAAAAAA", headers=AUTH2)
    assert r.status_code == 404 and "it never existed" in r.json()["detail"]


def test_a_key_holds_at_most_its_share(store, backend):
    settings = make_settings(store, API_KEYS=f"{KEY1},{KEY2}", MAX_SESSIONS_PER_KEY=2, **backend)
    with TestClient(create_app(settings)) as c:
        first = [new(c, AUTH1) for _ in range(2)]
        r = c.post("/v1/sessions", json={}, headers=AUTH1)
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        assert (
            "this API key holds its maximum of 2 sessions (MAX_SESSIONS_PER_KEY)"
            in r.json()["detail"]
        )
        new(c, AUTH2)  # the other key is not affected
        assert c.delete(f"/v1/sessions/{first[0]}", headers=AUTH1).status_code == 204
        new(c, AUTH1)


def test_without_keys_every_caller_is_the_same_owner(store, backend):
    settings = make_settings(store, MAX_SESSIONS_PER_KEY=1, **backend)
    with TestClient(create_app(settings)) as c:
        sids = [new(c, {}) for _ in range(3)]  # no per-key share without keys
        r = c.get(f"/v1/sessions/{sids[0]}", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 200  # a header is ignored: there are no keys to check
        listed = c.get("/v1/sessions").json()["sessions"]
        assert sorted(s["session_id"] for s in listed) == sorted(sids)


@pytest.mark.parametrize(
    ("setting", "paths"),
    [
        ("AUTH_METRICS", ["/metrics"]),
        ("AUTH_DOCS", ["/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"]),
    ],
)
def test_metrics_and_docs_behind_keys_by_setting(store, setting, paths):
    settings = make_settings(store, API_KEYS=KEY1, **{setting: True})
    with TestClient(create_app(settings)) as c:
        for path in paths:
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert c.get(path, headers=AUTH1).status_code == 200, path
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


def test_the_openapi_document_declares_the_bearer_scheme(client):
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for op in ops.values():
            secured = {"HTTPBearer": []} in op.get("security", [])
            assert secured == path.startswith("/v1"), path
            if path.startswith("/v1"):
                assert "401" in op["responses"], path


def test_without_keys_the_document_declares_no_auth(store):
    with TestClient(create_app(make_settings(store))) as c:
        doc = c.get("/openapi.json").json()
    assert "securitySchemes" not in doc["components"]
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "security" not in op and "401" not in op["responses"]
    errors = doc["paths"]["/v1/completions"]["post"]["responses"]
    for code in ("400", "422", "503"):
        schema = errors[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/OpenAIErrorResponse"}, code


def test_keys_are_neither_stored_nor_logged(store, redis_server, caplog):
    prefix = "authtest"
    settings = Settings(
        STORE=store,
        DEVICE="cpu",
        API_KEYS=KEY1,
        ACCESS_LOG=True,
        LOG_LEVEL="debug",
        SESSION_BACKEND="redis",
        REDIS_URL=redis_server.url,
        REDIS_PREFIX=prefix,
    )
    assert KEY1 not in repr(settings) and KEY1 not in str(settings.model_dump())
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings)) as c:
        sid = new(c, AUTH1, text="one")
        c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"}, headers=AUTH1)
        c.get("/v1/sessions", headers=AUTH1)
        c.get("/v1/sessions", headers={"Authorization": f"Bearer {KEY1}x"})
    assert KEY1 not in caplog.text
    r = redis.Redis.from_url(redis_server.url)
    dump = b"".join(
        k + b"".join(v for pair in r.hgetall(k).items() for v in pair)
        if r.type(k) == b"hash"
        else k + (r.get(k) or b"")  # the fleet's model state
        if r.type(k) == b"string"
        else k + b"".join(r.zrange(k, 0, -1))
        for k in r.keys(f"{prefix}:*")
    )
    assert KEY1.encode() not in dump
    assert r.hget(f"{prefix}:s:{sid}", "owner") == owner_of(KEY1).encode()


def test_bad_key_settings_stop_the_start(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# the team's keys\n{KEY1}\n\n  {KEY2}  \n")
    assert Settings(API_KEYS_FILE=keys, API_KEYS="key-three-0123456789").api_keys() == [
        "key-three-0123456789",
        KEY1,
        KEY2,
    ]
    assert Settings(API_KEYS="").api_keys() == []  # compose passes an empty value: keys off
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    for kwargs, message in [
        ({"API_KEYS": "short"}, "API key number 1 is too short"),
        ({"API_KEYS_FILE": empty}, "holds no key"),
        ({"API_KEYS_FILE": tmp_path / "missing"}, "No such file"),
    ]:
        with pytest.raises(ValidationError, match=message) as e:
            Settings(**kwargs)
        assert "short" not in str(e.value).replace("too short", "")  # the key is not echoed
