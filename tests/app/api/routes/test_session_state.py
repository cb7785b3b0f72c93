"""Fork, snapshot and restore: on both session stores and both request paths (the `settings`
fixture), across app instances, replicas and a restart."""

import base64
import copy
import hashlib
import hmac
import json
import struct

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from app.main import create_app
from launchers import AppProcess
from tests.app.conftest import make_settings

KEY = "state-signing-key-0123456789abcdef"
USER_A, USER_B = "user-a-key-0123456789", "user-b-key-0123456789"
TEXT = "two thousand one hundred one , two thousand one hundred two , two thousand"
MORE = "one hundred three , two"


def app_with(settings, **over):
    """A client of a new app on `settings`, with the signing key unless told otherwise."""
    over.setdefault("STATE_SIGNING_KEY", SecretStr(KEY))
    return TestClient(create_app(settings.model_copy(update=over)))


@pytest.fixture
def signed(settings):
    with app_with(settings) as c:
        yield c


def new(c, **body):
    r = c.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def probs(c, sid, text=""):
    r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": text, "top_k": 40})
    assert r.status_code == 200, r.text
    return {w["word"]: w["prob"] for w in r.json()["next"]}


def equal(a, b):
    assert a.keys() == b.keys() and a
    for word in a:
        assert a[word] == pytest.approx(b[word], abs=1e-6), word


def count(c):
    return len(c.get("/v1/sessions", params={"limit": 1000}).json()["sessions"])


def snapshot(c, sid):
    r = c.get(f"/v1/sessions/{sid}/state")
    assert r.status_code == 200, r.text
    return r.json()


def resign(doc):
    """The signature as the README defines it, written here independently of the server."""
    fields = {k: v for k, v in doc.items() if k != "signature"}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    doc["signature"] = hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()
    return doc


# -- fork --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gru", "gru-copy"])
def test_a_fork_goes_on_independently(signed, model):
    src = new(signed, model=model, text=TEXT)
    r = signed.post(f"/v1/sessions/{src['session_id']}/fork")
    assert r.status_code == 201, r.text
    fork = r.json()
    assert fork["session_id"] != src["session_id"]
    for field in ("model", "version", "tokens_seen", "last_words"):
        assert fork[field] == src[field], field
    a, b = src["session_id"], fork["session_id"]
    before = probs(signed, a)
    equal(probs(signed, b), before)
    # feeding the fork leaves the source as it was, and the other way round
    fed = probs(signed, b, MORE)
    equal(probs(signed, a), before)
    assert signed.get(f"/v1/sessions/{a}").json()["tokens_seen"] == src["tokens_seen"]
    equal(probs(signed, a, MORE), fed)
    other = probs(signed, a, "four")
    assert other != probs(signed, b)
    whole = signed.post(
        "/v1/next-word", json={"text": f"{TEXT} {MORE}", "model": model, "top_k": 40}
    ).json()
    equal(probs(signed, b), {w["word"]: w["prob"] for w in whole["next"]})


def test_a_fork_counts_as_a_create(settings):
    with app_with(settings, MAX_SESSIONS=2) as c:
        sid = new(c, text="one")["session_id"]
        assert c.post(f"/v1/sessions/{sid}/fork").status_code == 201
        r = c.post(f"/v1/sessions/{sid}/fork")
        assert r.status_code == 429 and "MAX_SESSIONS" in r.json()["detail"]
        assert count(c) == 2


def test_a_fork_never_evicts_its_source(settings):
    """With the evict policy, a full key makes room with its own idle sessions, never with
    the one being forked."""
    with app_with(settings, MAX_SESSIONS=1, SESSION_CAP_POLICY="evict") as c:
        sid = new(c, text="one")["session_id"]
        r = c.post(f"/v1/sessions/{sid}/fork")
        assert r.status_code == 429, r.text
        assert c.get(f"/v1/sessions/{sid}").status_code == 200 and count(c) == 1


# -- snapshot and restore ----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gru", "gru-copy"])
def test_a_snapshot_restores_on_another_app(settings, model):
    """Another app instance: with memory sessions it shares nothing with the first; with Redis
    it is another replica of the same store."""
    with app_with(settings) as a:
        src = new(a, model=model, text=TEXT)
        doc = snapshot(a, src["session_id"])
        assert doc["format"] == 1 and doc["model"] == model and doc["version"] == src["version"]
        assert doc["tokens_seen"] == src["tokens_seen"] and doc["last_words"] == src["last_words"]
        expected = probs(a, src["session_id"])
        then = probs(a, src["session_id"], MORE)
    with app_with(settings) as b:
        r = b.post("/v1/sessions", json={"state": doc, "top_k": 40})
        assert r.status_code == 201, r.text
        got = r.json()
        assert got["session_id"] != src["session_id"]
        assert (got["model"], got["version"], got["tokens_seen"]) == (
            model,
            src["version"],
            src["tokens_seen"],
        )
        equal({w["word"]: w["prob"] for w in got["next"]}, expected)
        equal(probs(b, got["session_id"], MORE), then)


def test_a_restore_then_feeds_the_text(signed):
    sid = new(signed, text=TEXT)["session_id"]
    r = signed.post(
        "/v1/sessions", json={"state": snapshot(signed, sid), "text": MORE, "top_k": 40}
    )
    assert r.status_code == 201, r.text
    assert r.json()["tokens_seen"] == len(TEXT.split()) + len(MORE.split())
    equal({w["word"]: w["prob"] for w in r.json()["next"]}, probs(signed, sid, MORE))


def test_a_restore_names_no_model(signed):
    doc = snapshot(signed, new(signed, text="one")["session_id"])
    r = signed.post("/v1/sessions", json={"state": doc, "model": "gru"})
    assert r.status_code == 422 and "not both" in r.json()["detail"]


def test_a_restore_counts_as_a_create(settings):
    with app_with(settings, MAX_SESSIONS=1) as c:
        doc = snapshot(c, new(c, text="one")["session_id"])
        r = c.post("/v1/sessions", json={"state": doc})
        assert r.status_code == 429 and "MAX_SESSIONS" in r.json()["detail"]
        assert count(c) == 1


# -- tampering ---------------------------------------------------------------------------------
def set_part(doc, name, fmt, value, at=0):
    """Write one value of a part (struct format `fmt`) at index `at`."""
    raw = bytearray(base64.b64decode(doc["parts"][name]))
    struct.pack_into(fmt, raw, at * struct.calcsize(fmt), value)
    doc["parts"][name] = base64.b64encode(bytes(raw)).decode()


def shortened(doc):
    doc["parts"]["h"] = doc["parts"]["h"][:-8]


CHANGES = {
    "format": (lambda d: d.update(format=2), "state.format is 2"),
    "model": (lambda d: d.update(model="gru-cell"), "state.signature does not check"),
    "version": (lambda d: d.update(version=d["version"] + 1), "state.signature does not check"),
    "layout": (
        lambda d: d["layout"].update(shape="1,57"),
        "state.signature does not check",
    ),
    "parts": (lambda d: set_part(d, "h", "<f", 0.5), "state.signature does not check"),
    "tokens_seen": (lambda d: d.update(tokens_seen=99), "state.signature does not check"),
    "last_words": (lambda d: d.update(last_words=["nine"]), "state.signature does not check"),
    "signature": (lambda d: d.update(signature="0" * 64), "state.signature does not check"),
    "signature-short": (lambda d: d.update(signature="ab"), "state.signature does not check"),
}
# Changes that a signer made (a document signed with the right key, wrong all the same): each
# check behind the signature names its own fault.
SIGNED_CHANGES = {
    "unknown model": (lambda d: d.update(model="gru-nope"), "state.model: 'gru-nope' version"),
    "unloaded version": (
        lambda d: d.update(version=d["version"] + 7),
        "is not loaded on this server",
    ),
    "layout": (
        lambda d: d["layout"].update(shape="1,57"),
        "state.layout ('1,57') 'float32' does not fit",
    ),
    "part missing": (lambda d: d["parts"].pop("h"), "state.parts names []"),
    "part length": (shortened, "needs 224"),
    "part not base64": (lambda d: d["parts"].update(h="!!!!"), "state.parts.h is not base64"),
    "NaN": (lambda d: set_part(d, "h", "<f", float("nan"), 3), "not finite (NaN or inf)"),
    "inf": (lambda d: set_part(d, "h", "<f", float("-inf")), "not finite (NaN or inf)"),
    "out of range": (lambda d: set_part(d, "h", "<f", 1.5, 9), "out of [-1, 1]"),
    "unknown word": (lambda d: d.update(last_words=["eleventy"]), "state.last_words"),
}


def refused(c, doc, detail):
    before = count(c)
    r = c.post("/v1/sessions", json={"state": doc, "text": "one"})
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]
    assert KEY not in r.text
    assert count(c) == before


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_document_is_refused(signed, change):
    doc = snapshot(signed, new(signed, text=TEXT)["session_id"])
    mutate, detail = CHANGES[change]
    mutate(doc)
    refused(signed, doc, detail)


@pytest.mark.parametrize("change", sorted(SIGNED_CHANGES))
def test_a_signed_but_wrong_document_is_refused(signed, change):
    doc = snapshot(signed, new(signed, text=TEXT)["session_id"])
    assert resign(copy.deepcopy(doc))["signature"] == doc["signature"]  # the README's recipe
    mutate, detail = SIGNED_CHANGES[change]
    mutate(doc)
    refused(signed, resign(doc), detail)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda d: set_part(d, "ids", "<q", 40, 2), "token id out of range (-1 to 39)"),
        (lambda d: set_part(d, "ids", "<q", -2), "token id out of range"),
        (lambda d: set_part(d, "seen", "<B", 2), "not a bool (0 or 1)"),
        (lambda d: set_part(d, "keys", "<f", float("nan"), 5), "state.parts.keys holds a value"),
        (lambda d: d.update(model="gru"), "does not fit model gru@"),
    ],
    ids=["id-too-big", "id-negative", "seen-not-bool", "keys-NaN", "another-models-layout"],
)
def test_a_copy_models_state_is_checked_part_by_part(signed, change, detail):
    doc = snapshot(signed, new(signed, model="gru-copy", text=TEXT)["session_id"])
    change(doc)
    refused(signed, resign(doc), detail)


def test_another_servers_key_is_refused(settings):
    with app_with(settings) as a:
        doc = snapshot(a, new(a, text=TEXT)["session_id"])
    with app_with(settings, STATE_SIGNING_KEY=SecretStr("another-key-0123456789abcdef")) as b:
        refused(b, doc, "state.signature does not check")


OLD, NEWER = "old-state-key-0123456789abcdef", "newer-state-key-0123456789abcd"


def test_a_rotated_key_still_checks_what_it_signed_and_signs_nothing(settings, tmp_path):
    """Rotation: documents signed with the old key restore on a server that signs with a new
    one and keeps the old as a fallback (in the setting or below the first line of the key
    file); what that server signs, the new key alone checks."""
    with app_with(settings, STATE_SIGNING_KEY=SecretStr(OLD)) as old:
        sid = new(old, text=TEXT)["session_id"]
        doc, expected = snapshot(old, sid), probs(old, sid, MORE)
    key_file = tmp_path / "state-keys"
    key_file.write_text(f"# the first line signs\n{NEWER}\n\n{OLD}\n")
    for how in (
        {"STATE_SIGNING_KEY": SecretStr(NEWER), "STATE_SIGNING_KEY_FALLBACKS": SecretStr(OLD)},
        {"STATE_SIGNING_KEY": None, "STATE_SIGNING_KEY_FILE": key_file},
    ):
        with app_with(settings, **how) as rotated:
            restored = new(rotated, state=doc)["session_id"]
            equal(probs(rotated, restored, MORE), expected)
            again = snapshot(rotated, restored)
        with app_with(settings, STATE_SIGNING_KEY=SecretStr(NEWER)) as newer:
            assert new(newer, state=again)["tokens_seen"] == again["tokens_seen"]
            refused(newer, doc, "state.signature does not check")  # the old key is gone here
        with app_with(settings, STATE_SIGNING_KEY=SecretStr(OLD)) as old:
            refused(old, again, "state.signature does not check")  # signed with NEWER only


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"STATE_SIGNING_KEY": KEY, "STATE_SIGNING_KEY_FILE": "FILE"}, "are both set"),
        ({"STATE_SIGNING_KEY_FALLBACKS": OLD}, "without a key that signs"),
        ({"STATE_SIGNING_KEY": KEY, "STATE_SIGNING_KEY_FALLBACKS": "short-s3cr3t"}, "too short"),
        ({"STATE_SIGNING_KEY_FILE": "FILE", "write": "# none\n\n"}, "holds no key"),
        ({"STATE_SIGNING_KEY_FILE": "FILE", "write": f"{KEY}\nshort-s3cr3t\n"}, "too short"),
        ({"STATE_SIGNING_KEY_FILE": "MISSING"}, "No such file"),
    ],
    ids=[
        "key-and-file",
        "fallbacks-alone",
        "short-fallback",
        "empty-file",
        "short-in-file",
        "no-file",
    ],
)
def test_bad_signing_key_settings_stop_the_start(store, tmp_path, env, problem):
    env = dict(env)
    key_file = tmp_path / "state-keys"
    key_file.write_text(env.pop("write", f"{KEY}\n"))
    for name, value in env.items():
        env[name] = {"FILE": str(key_file), "MISSING": str(tmp_path / "nope")}.get(value, value)
    with pytest.raises(ValidationError, match=problem) as e:
        make_settings(store, **env)
    assert "s3cr3t" not in str(e.value) and KEY not in str(e.value)  # no key is echoed


# -- without a key, and other keys' sessions -----------------------------------------------------
def test_without_a_signing_key_state_routes_answer_501(settings):
    with app_with(settings) as a:
        doc = snapshot(a, new(a, text="one")["session_id"])
    with app_with(settings, STATE_SIGNING_KEY=None) as c:
        sid = new(c, text="one")["session_id"]
        r = c.get(f"/v1/sessions/{sid}/state")
        assert r.status_code == 501 and "STATE_SIGNING_KEY" in r.json()["detail"]
        before = count(c)
        r = c.post("/v1/sessions", json={"state": doc})
        assert r.status_code == 501 and "STATE_SIGNING_KEY" in r.json()["detail"]
        assert count(c) == before
        # a fork needs no document: it works without a key
        assert c.post(f"/v1/sessions/{sid}/fork").status_code == 201


def test_a_short_signing_key_stops_the_start(store):
    with pytest.raises(ValidationError, match="STATE_SIGNING_KEY is too short") as e:
        make_settings(store, STATE_SIGNING_KEY="s3cr3t-short")
    assert "s3cr3t" not in str(e.value)  # the key is not echoed
    assert make_settings(store, STATE_SIGNING_KEY="").STATE_SIGNING_KEY is None  # compose's ""


def test_another_key_cannot_fork_or_snapshot(settings):
    a = {"Authorization": f"Bearer {USER_A}"}
    b = {"Authorization": f"Bearer {USER_B}"}
    with app_with(settings, API_KEYS=SecretStr(f"{USER_A},{USER_B}")) as c:
        sid = c.post("/v1/sessions", json={"text": "one"}, headers=a).json()["session_id"]
        theirs = c.post(f"/v1/sessions/{sid}/next-word", json={}, headers=b)
        assert theirs.status_code == 404
        for method, path in [("POST", "fork"), ("GET", "state")]:
            r = c.request(method, f"/v1/sessions/{sid}/{path}", headers=b)
            assert (r.status_code, r.json()) == (404, theirs.json()), path
        assert c.get("/v1/sessions", headers=b).json()["sessions"] == []
        mine = c.post(f"/v1/sessions/{sid}/fork", headers=a)
        assert mine.status_code == 201
        assert c.get(f"/v1/sessions/{mine.json()['session_id']}", headers=b).status_code == 404


def test_an_unknown_session_has_no_fork_nor_state(signed):
    for method, path in [("POST", "fork"), ("GET", "state")]:
        r = signed.request(method, f"/v1/sessions/nope-0123456789/{path}")
        assert r.status_code == 404 and "no session" in r.json()["detail"], path


# -- processes: two replicas of one Redis, and a restart -----------------------------------------
def test_a_snapshot_continues_on_another_replica_and_after_a_restart(store, redis_server):
    env = {
        "SESSION_BACKEND": "redis",
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": "tstate",
        "STATE_SIGNING_KEY": KEY,
        "DEFAULT_MODEL": "gru-copy",
    }
    a, b = AppProcess(store, **env).start(), AppProcess(store, **env).start()
    try:
        with a.client() as ca:
            sid = new(ca, text=TEXT)["session_id"]
            doc = snapshot(ca, sid)
            expected = probs(ca, sid, MORE)
        with b.client() as cb:  # another replica
            other = new(cb, state=doc)["session_id"]
            equal(probs(cb, other, MORE), expected)
        a.stop()
        a.start()
        with a.client() as ca:  # the same server after a restart
            again = new(ca, state=doc)["session_id"]
            equal(probs(ca, again, MORE), expected)
            assert ca.get(f"/v1/sessions/{again}").json()["tokens_seen"] == len(
                f"{TEXT} {MORE}".split()
            )
    finally:
        a.kill()
        b.kill()
