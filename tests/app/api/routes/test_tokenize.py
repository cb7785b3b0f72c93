import json
import random

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import VARIANTS, make_settings

SEPARATORS = (" ", "  ", "\t", "\n ")


def vocabulary(client, model="gru"):
    """The model's tokens by id, and the ones a text may hold (its words and xxbos)."""
    body = client.get(f"/v1/models/{model}").json()
    return body["vocab"], [*body["words"], "xxbos"]


def write(tokens, rng):
    """A text of `tokens` as a person might type it: random case, runs of spaces, commas
    touching the words or not."""
    parts = []
    for tok in tokens:
        word = (
            tok.upper() if rng.random() < 0.2 else tok.capitalize() if rng.random() < 0.2 else tok
        )
        glue = "" if tok == "," and rng.random() < 0.5 else rng.choice(SEPARATORS)
        parts += [glue, word]
    return "".join(parts) + rng.choice(("", " ", "  "))


def test_round_trip_text_ids_text(client):
    """text -> ids -> text gives the text normalized: lower case, each comma its own token,
    tokens joined by one space; the ids are those the other routes read."""
    itos, typable = vocabulary(client)
    rng = random.Random(22)
    for n in range(40):
        tokens = [rng.choice(typable) for _ in range(rng.randint(1, 30))]
        if n % 4 == 0:
            tokens.insert(rng.randint(0, len(tokens)), "xxbos")
        text = write(tokens, rng)
        t = client.post("/v1/tokenize", json={"prompt": text, "add_special_tokens": False})
        assert t.status_code == 200, t.text
        body = t.json()
        assert body["unknown"] == [] and body["words"] == tokens
        assert [itos[i] for i in body["tokens"]] == tokens and body["count"] == len(tokens)
        d = client.post("/v1/detokenize", json={"tokens": body["tokens"]})
        assert d.status_code == 200, d.text
        assert d.json()["prompt"] == " ".join(tokens) and d.json()["words"] == tokens
        # the prompt reads as the same ids, and next-word reads the text as tokenize does
        again = client.post("/v1/tokenize", json={"prompt": d.json()["prompt"]}).json()
        assert again["tokens"][1:] == body["tokens"]
        nxt = client.post("/v1/next-word", json={"text": text})
        assert nxt.status_code == 200 and nxt.json()["tokens"] == tokens


def test_tokenize_in_vllms_shape(client):
    itos, _ = vocabulary(client)
    r = client.post("/v1/tokenize", json={"prompt": "Eight thousand,", "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    bos = itos.index("xxbos")  # add_special_tokens is on by default, as vLLM's
    assert body["tokens"] == [bos, itos.index("eight"), itos.index("thousand"), itos.index(",")]
    assert body["token_strs"] == ["xxbos", "eight", "thousand", ","]
    assert body["count"] == 4 and body["max_model_len"] == 200_000  # MAX_REQUEST_TOKENS
    assert body["words"] == ["eight", "thousand", ","] and body["unknown"] == []
    assert body["model"] == "gru" and body["version"] == 1
    assert r.headers["x-model-version"] == "gru@1"
    without = client.post("/v1/tokenize", json={"prompt": "Eight thousand,"}).json()
    assert without["token_strs"] is None and without["tokens"] == body["tokens"]


def test_an_empty_text_is_its_start(client):
    itos, _ = vocabulary(client)
    body = client.post("/v1/tokenize", json={"prompt": "  "}).json()
    assert body["tokens"] == [itos.index("xxbos")] and body["words"] == []
    body = client.post("/v1/tokenize", json={"prompt": "", "add_special_tokens": False}).json()
    assert body["tokens"] == [] and body["count"] == 0
    assert client.post("/v1/detokenize", json={"tokens": []}).json()["prompt"] == ""


def test_unknown_words_are_reported_with_their_positions(client):
    """Tokenize answers what the other routes refuse: every unknown word at its position in
    `words` (the position their 422 names), and ids for the known words only."""
    itos, _ = vocabulary(client)
    text = "one two Eleventy, three xxpad zillion"
    body = client.post("/v1/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert body["words"] == ["one", "two", "eleventy", ",", "three", "xxpad", "zillion"]
    assert body["unknown"] == [
        {"word": "eleventy", "index": 2},
        {"word": "xxpad", "index": 5},
        {"word": "zillion", "index": 6},
    ]
    assert [itos[i] for i in body["tokens"]] == ["one", "two", ",", "three"]
    assert body["count"] == 4
    refused = client.post("/v1/next-word", json={"text": text})
    assert refused.status_code == 422
    assert "unknown word 'eleventy' at position 2" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("ids", "named"),
    [
        ([19, 40, 11], ["40 at index 1"]),
        ([-1], ["-1 at index 0"]),
        (
            [1, 12, 0, 39],
            ["1 (xxpad) at index 0", "0 (xxunk) at index 2", "39 (xxfake) at index 3"],
        ),
        ([10**30], ["1000000000000000000000000000000 at index 0"]),
        ([99] * 8, ["99 at index 4", "and 3 more"]),
    ],
)
def test_detokenize_refuses_ids_a_text_cannot_hold(client, ids, named):
    r = client.post("/v1/detokenize", json={"tokens": ids})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("token ids not of a text of model 'gru': ")
    assert "ids run 0 to 39" in detail
    for words in named:
        assert words in detail
    assert "99 at index 5" not in detail  # five named at most


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        (
            "/v1/tokenize",
            {"prompt": "one " * 3000},
            413,
            "text is 12,000 characters; this server takes at most 10,000",
        ),
        (
            "/v1/detokenize",
            {"tokens": [12] * 10_002},
            413,
            "tokens holds 10,002 ids; this server takes at most 10,001",
        ),
        ("/v1/tokenize", {"prompt": "one", "model": "lstm"}, 404, "no model 'lstm'"),
        ("/v1/detokenize", {"tokens": [12], "model": "lstm"}, 404, "no model 'lstm'"),
        ("/v1/tokenize", {"prompt": "one", "model": "gru@7"}, 404, "has no version 7"),
        ("/v1/tokenize", {"prompt": 5}, 422, "Input should be a valid string"),
        ("/v1/tokenize", {"prompt": "one", "add_special_tokens": 1}, 422, "valid boolean"),
        ("/v1/tokenize", {"text": "one"}, 422, "Field required"),
        ("/v1/detokenize", {"tokens": ["one"]}, 422, "Input should be a valid integer"),
        ("/v1/detokenize", {"tokens": [1.5]}, 422, "Input should be a valid integer"),
        ("/v1/detokenize", {"tokens": [12], "skip": True}, 422, "Extra inputs are not permitted"),
    ],
)
def test_errors(client, path, body, status, detail):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert detail in json.dumps(r.json()["detail"])


def test_the_limit_is_the_longest_text(client):
    """A text of MAX_TEXT_CHARS commas and its xxbos: tokenize's longest answer, which
    detokenize takes back."""
    body = client.post("/v1/tokenize", json={"prompt": "," * 10_000}).json()
    assert body["count"] == 10_001
    r = client.post("/v1/detokenize", json={"tokens": body["tokens"]})
    assert r.status_code == 200 and r.json()["prompt"] == " ".join(["xxbos"] + [","] * 10_000)


@pytest.mark.parametrize("model", VARIANTS)
def test_every_model_by_name_and_version(client, model):
    body = client.post("/v1/tokenize", json={"prompt": "two ,", "model": f"{model}@1"}).json()
    assert body["model"] == model and body["version"] == 1
    d = client.post("/v1/detokenize", json={"tokens": body["tokens"], "model": model})
    assert d.json()["model"] == model and d.json()["prompt"] == "xxbos two ,"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_api_keys_guard_both_routes(store, fast_path):
    key = "key-of-alice-0123456789"
    settings = make_settings(store, DEFAULT_MODEL="gru", API_KEYS=key, FAST_PATH=fast_path)
    with TestClient(create_app(settings)) as c:
        for path, body in (
            ("/v1/tokenize", {"prompt": "one"}),
            ("/v1/detokenize", {"tokens": [12]}),
        ):
            r = c.post(path, json=body)
            assert r.status_code == 401 and "needs an API key" in r.json()["detail"]
            wrong = c.post(path, json=body, headers={"Authorization": "Bearer not-a-key-here"})
            assert wrong.status_code == 401
            ok = c.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200, ok.text


def test_the_document_states_the_bounds(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["TokenizeRequest"]["properties"]["prompt"]["maxLength"] == 10_000
    assert schemas["DetokenizeRequest"]["properties"]["tokens"]["maxItems"] == 10_001
    assert {"/v1/tokenize", "/v1/detokenize"} <= set(spec["paths"])
