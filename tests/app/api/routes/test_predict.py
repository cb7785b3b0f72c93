import json

import pytest

from tests.app.conftest import VARIANTS

TEXT = "eight thousand one hundred one, eight thousand one hundred two, eight thousand"


def test_next_word(client):
    r = client.post("/v1/next-word", json={"text": TEXT})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "gru"
    assert body["tokens"][:6] == ["eight", "thousand", "one", "hundred", "one", ","]
    assert len(body["next"]) == 5
    probs = [w["prob"] for w in body["next"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    # "eight thousand one hundred three" comes next; the models never saw "eight thousand" in
    # training (1 to 7,999), so they only put "one" among their guesses
    assert "one" in [w["word"] for w in body["next"]]


def test_next_word_all_words_sum_to_one(client):
    body = client.post(
        "/v1/next-word", json={"text": "one", "top_k": 40, "model": "gru-cell"}
    ).json()
    assert body["model"] == "gru-cell"
    assert len(body["next"]) == 30  # only words are ever predicted: no special tokens
    assert sum(w["prob"] for w in body["next"]) == pytest.approx(1, abs=1e-5)
    assert not any(w["word"].startswith("xx") for w in body["next"])


def test_tokenizing_is_forgiving_about_case_commas_and_spaces(client):
    a = client.post("/v1/next-word", json={"text": "One,two ,  THREE,"}).json()
    b = client.post("/v1/next-word", json={"text": "one , two , three ,"}).json()
    assert a == b
    assert a["tokens"] == ["one", ",", "two", ",", "three", ","]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"text": "one two eleventy"}, 422, "unknown word 'eleventy' at position 2"),
        ({"text": "one xxpad"}, 422, "unknown word 'xxpad' at position 1"),
        ({"text": ""}, 422, "text has no words"),
        ({"text": "   "}, 422, "text has no words"),
        ({"text": "one", "top_k": 0}, 422, "greater than or equal to 1"),
        ({"text": "one", "top_k": 41}, 422, "less than or equal to 40"),
        ({"text": "one", "model": "lstm"}, 404, "no model 'lstm'"),
        (
            {"text": "one " * 3000},
            413,
            "text is 12,000 characters; this server takes at most 10,000",
        ),
        ({"text": 5}, 422, "Input should be a valid string"),
        ({}, 422, "Field required"),
        ({"text": "one", "topk": 3}, 422, "Extra inputs are not permitted"),
    ],
)
def test_next_word_errors(client, body, status, detail):
    r = client.post("/v1/next-word", json=body)
    assert r.status_code == status, r.text
    assert detail in json.dumps(r.json()["detail"])


def test_unknown_word_says_where_the_vocabulary_is(client):
    detail = client.post("/v1/next-word", json={"text": "eleventy"}).json()["detail"]
    assert detail.endswith("the vocabulary of model 'gru' is listed at GET /v1/models/gru")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_malformed_json_is_a_422(client, raw):
    r = client.post("/v1/next-word", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"]


@pytest.mark.parametrize("model", VARIANTS)
def test_greedy_continuation_is_chained_argmax(client, model):
    body = client.post(
        "/v1/continuation", json={"text": TEXT, "model": model, "max_words": 8}
    ).json()
    assert body["model"] == model and body["finish_reason"] == "length"
    assert len(body["words"]) == len(body["probs"]) == 8
    assert body["text"] == " ".join(body["words"])
    text = TEXT
    for word, prob in zip(body["words"], body["probs"], strict=True):
        top = client.post("/v1/next-word", json={"text": text, "model": model, "top_k": 1}).json()
        assert top["next"][0]["word"] == word
        assert top["next"][0]["prob"] == pytest.approx(prob, abs=1e-5)
        text += " " + word


def test_sampling_is_reproducible_with_a_seed(client):
    req = {"text": "one ,", "max_words": 30, "temperature": 1.5, "seed": 7}
    a = client.post("/v1/continuation", json=req).json()
    b = client.post("/v1/continuation", json=req).json()
    c = client.post("/v1/continuation", json={**req, "seed": 8}).json()
    assert a == b
    assert a["words"] != c["words"]
    greedy = client.post("/v1/continuation", json={"text": "one ,", "max_words": 30}).json()
    assert a["words"] != greedy["words"]  # 1.5 is hot enough to leave the greedy path


def test_top_k_1_and_tiny_top_p_sample_the_greedy_path(client):
    greedy = client.post("/v1/continuation", json={"text": TEXT, "max_words": 10}).json()
    for extra in ({"top_k": 1}, {"top_p": 1e-6}):
        body = {"text": TEXT, "max_words": 10, "temperature": 5.0, "seed": 1, **extra}
        assert client.post("/v1/continuation", json=body).json()["words"] == greedy["words"]


def test_stop_words(client):
    greedy = client.post("/v1/continuation", json={"text": TEXT, "max_words": 10}).json()
    assert "," in greedy["words"]
    cut = greedy["words"].index(",")
    body = client.post(
        "/v1/continuation", json={"text": TEXT, "max_words": 10, "stop": [","]}
    ).json()
    assert body["finish_reason"] == "stop"
    assert body["words"] == greedy["words"][:cut]


@pytest.mark.parametrize(
    ("extra", "status", "detail"),
    [
        ({"max_words": 0}, 422, "greater than or equal to 1"),
        ({"max_words": 201}, 422, "max_words is 201; this server generates at most 200"),
        ({"temperature": -0.1}, 422, "greater than or equal to 0"),
        ({"top_p": 0}, 422, "greater than 0"),
        ({"top_p": 1.5}, 422, "less than or equal to 1"),
        ({"top_k": 99}, 422, "less than or equal to 40"),
        ({"seed": -1}, 422, "greater than or equal to 0"),
        ({"stop": ["eleventy"]}, 422, "stop word 'eleventy' is not a word of the vocabulary"),
        ({"stop": ["one two"]}, 422, "stop word 'one two'"),
        ({"text": "one eleventy"}, 422, "unknown word 'eleventy'"),
        ({"text": ""}, 422, "text has no words"),
        ({"model": "nope"}, 404, "no model 'nope'"),
        ({"text": "x" * 10_001}, 413, "MAX_TEXT_CHARS"),
    ],
)
def test_continuation_errors(client, extra, status, detail):
    for stream in (False, True):
        r = client.post("/v1/continuation", json={"text": "one", "stream": stream, **extra})
        assert r.status_code == status, r.text
        assert detail in json.dumps(r.json()["detail"])


def parse_sse(text):
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def test_streaming_sends_one_event_per_word_then_the_finish_reason(client):
    req = {"text": TEXT, "max_words": 6}
    whole = client.post("/v1/continuation", json=req).json()
    with client.stream("POST", "/v1/continuation", json={**req, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.read().decode())
    assert events[-1] == {"finish_reason": "length"}
    assert [e["word"] for e in events[:-1]] == whole["words"]
    assert [e["prob"] for e in events[:-1]] == pytest.approx(whole["probs"], abs=1e-6)
