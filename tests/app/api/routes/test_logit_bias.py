"""`logit_bias` as OpenAI checks it (issue 17, row 8): a key is a token id in ASCII digits or,
beyond OpenAI, a word; anything else is a 400 in OpenAI's shape naming the key by a short
prefix, and keys that name one token add up to a bias clamped to [-100, 100]."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.logit_bias import logit_bias
from model_store import Vocab
from model_store.vocab import SPECIAL_TOKENS
from tests.app.conftest import make_settings

PROMPT = "one thousand one hundred one , one thousand one hundred two ,"


@pytest.fixture(scope="module")
def http(store) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru"))) as c:
        yield c


def complete(http: TestClient, bias: dict[str, float], **extra: object) -> dict[str, object]:
    started = time.monotonic()
    r = http.post(
        "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "logit_bias": bias, **extra},
    )
    assert time.monotonic() - started < 5
    return {"status": r.status_code, **r.json()}


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("²", "'²'"),  # str.isdigit() says yes, int() says no
        ("①", "'①'"),
        ("٣", "'٣'"),  # an Arabic-Indic three: int() reads it, OpenAI does not
        ("9" * 5000, f"{'9' * 40}... (5,000 characters)"),  # int() refuses past 4,300 digits
        ("12345678901234567890", "12345678901234567890"),
        ("-1", "'-1'"),
        ("eleventy", "'eleventy'"),
    ],
)
def test_a_key_that_is_neither_a_token_id_nor_a_word_is_a_400_naming_it(http, key, shown):
    got = complete(http, {key: 1})
    assert got["status"] == 400, got
    error = got["error"]
    assert isinstance(error, dict)
    assert error["param"] == "logit_bias" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("invalid key in logit_bias: "), error
    assert shown in error["message"]
    assert len(error["message"]) < 300


def test_keys_of_one_token_add_up_and_are_clamped(http):
    ten = str(lookup(http, "ten"))
    same_word = {"one": 100, "One": 100, "ONE": 100, " one": 100, "one ": 100}
    same_id = {ten: 100, f"0{ten}": 100, f"00{ten}": 100}
    got = complete(http, {**same_word, **same_id}, logprobs=1)
    assert got["status"] == 200, got
    choice = got["choices"][0]  # type: ignore[index]
    # one and ten both at +100 (clamped, not +500 and +300): the others vanish beside them
    assert set(choice["text"].split()) <= {"one", "ten"}
    assert all(p is not None and p <= 0 for p in choice["logprobs"]["token_logprobs"])
    # opposite biases of one token cancel out: the same as no bias at all
    plain = complete(http, {})
    cancelled = complete(http, {"one": 100, "ONE": -100})
    assert cancelled["choices"] == plain["choices"]  # type: ignore[index]


def lookup(http: TestClient, word: str) -> int:
    words = http.get("/v1/models/gru").json()["vocab"]
    return int(words.index(word))


def test_the_summed_bias_is_clamped():
    vocab = Vocab((*SPECIAL_TOKENS, "one"))
    one = len(SPECIAL_TOKENS)
    bias = logit_bias(vocab, "m", {"one": 100, " ONE": 100, str(one): 60, f"0{one}": -30})
    assert bias is not None and bias[one] == 100.0
    bias = logit_bias(vocab, "m", {"one": -100, "One": -100})
    assert bias == [0.0] * one + [-100.0]
