"""The openai client and lm-evaluation-harness's calls against the real server (`python -m
app`): real HTTP, real streams, the headers such clients send."""

from __future__ import annotations

import http.client
import json
import math

import httpx
import openai
import pytest

from launchers import AppProcess
from tests.app.conftest import VARIANTS

PROMPT = "one thousand one hundred one , one thousand one hundred two ,"


@pytest.fixture(scope="module")
def server(store):
    app = AppProcess(store, LOG_LEVEL="warning", DEFAULT_MODEL="gru").start()
    yield app.base
    app.kill()


def test_the_readme_example(server):
    client = openai.OpenAI(
        base_url=f"{server}/v1", api_key="none", _strict_response_validation=True, max_retries=0
    )
    assert [m.id for m in client.models.list()] == list(VARIANTS)
    c = client.completions.create(model="gru", prompt="one, two, three,", max_tokens=5)
    assert c.choices[0].finish_reason in ("stop", "length") and c.usage is not None
    assert c.usage.prompt_tokens == 6 and 1 <= c.usage.completion_tokens <= 5


def test_lm_eval_generation_call_with_an_empty_bearer(server):
    """lm-evaluation-harness's `local-completions` generate_until request, as it sends it
    when no key is set: `Authorization: Bearer ` with nothing after it."""
    body = {
        "model": "gru",
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0,
        "stop": [",", "\n"],
        "seed": 1234,
    }
    # httpx refuses a header value ending in a space; the standard library sends it as is
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps(body),
        {"Authorization": "Bearer ", "Content-Type": "application/json"},
    )
    r = conn.getresponse()
    text = r.read()
    assert r.status == 200, text
    choice = json.loads(text)["choices"][0]
    greedy = httpx.post(
        f"{server}/v1/continuation", json={"text": PROMPT, "stop": [","], "max_words": 16}
    ).json()
    assert choice["text"] == " " + greedy["text"] and choice["finish_reason"] == "stop"


def test_lm_eval_loglikelihood_call(server):
    body = {
        "model": "gru",
        "prompt": [PROMPT, "one , two ,"],
        "max_tokens": 0,
        "echo": True,
        "logprobs": 1,
        "temperature": 0,
        "seed": 1234,
    }
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    for choice, prompt in zip(r.json()["choices"], body["prompt"], strict=True):
        lp = choice["logprobs"]
        assert choice["text"] == prompt and len(lp["tokens"]) == len(prompt.split())
        assert lp["token_logprobs"][0] is None
        assert all(v <= 0 and math.isfinite(v) for v in lp["token_logprobs"][1:])


def test_a_real_stream_of_many_prompts(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0)
    prompts = ["one ,", "two ,", "three ,"]
    whole = client.completions.create(model="gru", prompt=prompts, max_tokens=8, temperature=0)
    texts = ["", "", ""]
    finishes = [None, None, None]
    for chunk in client.completions.create(
        model="gru", prompt=prompts, max_tokens=8, temperature=0, stream=True
    ):
        for ch in chunk.choices:
            assert finishes[ch.index] is None, "a chunk after the choice's finish"
            texts[ch.index] += ch.text
            finishes[ch.index] = ch.finish_reason
    assert texts == [c.text for c in whole.choices]
    assert finishes == [c.finish_reason for c in whole.choices]
