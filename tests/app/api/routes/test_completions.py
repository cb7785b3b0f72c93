"""POST /v1/completions and the OpenAI model list, driven by the official openai client with
strict response validation (every response must parse as the client's own types)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from app.engine.generation import Generation
from app.engine.params import SamplingParams
from app.engine.sampling import adjusted
from app.main import create_app
from tests.app.conftest import VARIANTS, make_settings, run_app

PROMPT = "one thousand one hundred one , one thousand one hundred two ,"


def connect(http: TestClient, strict: bool = True) -> openai.OpenAI:
    """The official client on the app. Strict validation parses every response as the
    client's own types; streams cannot be checked so: their chunks carry `finish_reason:
    null` until the last, as OpenAI's own do, which the client's types do not allow
    (openai/openai-openapi#100)."""
    return openai.OpenAI(
        base_url="http://testserver/v1",
        api_key="none",
        http_client=http,
        max_retries=0,
        _strict_response_validation=strict,
    )


@pytest.fixture
def http(store) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru"))) as c:
        yield c


@pytest.fixture
def oai(http) -> openai.OpenAI:
    return connect(http)


def complete(oai: Any, **args: Any) -> Any:
    """completions.create, with the model the client insists on (the default one)."""
    args.setdefault("model", "gru")
    return oai.completions.create(**args)


def continuation(http: TestClient, text: str, **options: Any) -> dict[str, Any]:
    r = http.post("/v1/continuation", json={"text": text, **options})
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- models --------------------------------------------------------------------------------
def test_models_list_in_openai_shape_keeps_our_fields(oai, http):
    models = oai.models.list()
    assert [m.id for m in models.data] == list(VARIANTS)
    assert all(m.object == "model" and m.owned_by == "human-numbers" for m in models.data)
    assert all(m.created > 1_700_000_000 for m in models.data)
    body = http.get("/v1/models").json()
    assert body["object"] == "list" and body["default"] in VARIANTS
    assert [m["name"] for m in body["models"]] == list(VARIANTS)
    one = oai.models.retrieve("gru-cell")
    assert one.id == "gru-cell" and one.object == "model"
    assert "hundred" in http.get("/v1/models/gru-cell").json()["words"]


# -- generation ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", VARIANTS)
def test_greedy_equals_continuation_and_logprobs_are_logs_of_its_probs(oai, http, model):
    c = complete(oai, model=model, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=5)
    ours = continuation(http, PROMPT, model=model, max_words=12)
    choice = c.choices[0]
    assert choice.text == " " + ours["text"]
    assert choice.finish_reason == ours["finish_reason"] == "length"
    assert c.object == "text_completion" and c.model == model and c.id.startswith("cmpl-")
    assert c.system_fingerprint is not None and c.system_fingerprint.startswith(f"{model}-v1-")
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.tokens == [" " + w for w in ours["words"]]
    assert lp.token_logprobs == [math.log(p) for p in ours["probs"]]
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert lp.top_logprobs is not None
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 5 and list(top.values()) == sorted(top.values(), reverse=True)
        assert next(iter(top)) == token and top[token] == value  # greedy: the likeliest
    assert c.usage is not None
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (
        12,
        12,
        24,
    )


def test_streaming_text_equals_the_whole(oai, http):
    lax = connect(http, strict=False)
    whole = complete(oai, prompt=PROMPT, max_tokens=10, temperature=0)
    chunks = list(
        complete(
            lax,
            prompt=PROMPT,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    words = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(words) == 10  # one chunk per word
    assert all(len(c.choices[0].text.split()) == 1 for c in words)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len({c.id for c in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_streaming_with_a_stop_sequence_equals_the_whole(oai, http):
    lax = connect(http, strict=False)
    greedy = complete(oai, prompt=PROMPT, max_tokens=12, temperature=0)
    words = greedy.choices[0].text.split()
    stop = " ".join(words[3:5])  # a two-word sequence inside the output
    whole = complete(oai, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop)
    stream = complete(lax, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop, stream=True)
    text = "".join(c.choices[0].text for c in stream)
    assert text == whole.choices[0].text == " " + " ".join(words[:3])
    assert whole.choices[0].finish_reason == "stop"


def test_stop_strings_match_on_the_text(oai):
    greedy = complete(oai, prompt=PROMPT, max_tokens=12, temperature=0).choices[0]
    assert "," in greedy.text
    first_comma = greedy.text.split().index(",")
    c = complete(oai, prompt=PROMPT, max_tokens=12, temperature=0, stop=",")
    assert c.choices[0].text == " " + " ".join(greedy.text.split()[:first_comma])
    assert c.choices[0].finish_reason == "stop"
    assert c.usage is not None and c.usage.completion_tokens == first_comma
    # a string no word sequence makes never matches; one inside a word cuts the text there
    never = complete(oai, prompt=PROMPT, max_tokens=12, temperature=0, stop=["\n"])
    assert never.choices[0].text == greedy.text and never.choices[0].finish_reason == "length"
    inside = greedy.text[3:7]
    cut = complete(oai, prompt=PROMPT, max_tokens=12, temperature=0, stop=[inside])
    assert cut.choices[0].text == greedy.text[: greedy.text.index(inside)]
    assert cut.choices[0].finish_reason == "stop"


def test_prompt_lists_give_one_choice_per_prompt_in_order(oai, http):
    prompts = ["one ,", "seven thousand two hundred", PROMPT]
    c = complete(oai, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [ch.index for ch in c.choices] == list(range(6))
    for i, prompt in enumerate(prompts):
        expected = " " + continuation(http, prompt, max_words=6)["text"]
        assert [c.choices[2 * i].text, c.choices[2 * i + 1].text] == [expected, expected]
    assert c.usage is not None and c.usage.prompt_tokens == 2 + 4 + 12
    assert c.usage.completion_tokens == 36
    # token ids are prompts too
    ids = http.post("/v1/next-word", json={"text": prompts[1]}).json()["tokens"]
    vocab = http.get("/v1/models/gru").json()["vocab"]
    by_ids = complete(oai, prompt=[vocab.index(t) for t in ids], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == c.choices[2].text


def test_seeded_samples_are_reproducible_and_the_first_is_continuations(oai, http):
    args: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 15, "seed": 7, "n": 4}
    a = complete(oai, **args)
    b = complete(oai, **args)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # n samples, not n copies
    same = continuation(http, PROMPT, max_words=15, temperature=1.0, seed=7)
    assert a.choices[0].text == " " + same["text"]
    other = complete(oai, prompt=PROMPT, max_tokens=15, seed=8)
    assert other.choices[0].text != a.choices[0].text


def test_best_of_returns_the_likeliest_samples(oai):
    args: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 8, "seed": 3, "logprobs": 0}
    all4 = complete(oai, n=4, **args).choices
    best = complete(oai, n=1, best_of=4, **args).choices
    score = {c.text: sum(c.logprobs.token_logprobs) for c in all4}  # type: ignore[union-attr, arg-type]
    assert best[0].text == max(score, key=score.__getitem__)


def test_echo_scores_the_prompt_as_lm_eval_asks(oai, http):
    """lm-evaluation-harness's loglikelihood call: max_tokens 0, echo, logprobs 1."""
    prompt = "one hundred one , one hundred two"
    raw = complete(
        oai.with_raw_response,
        model="gru",
        prompt=prompt,
        max_tokens=0,
        echo=True,
        logprobs=1,
        temperature=0,
    )
    body = raw.http_response.json()
    choice = body["choices"][0]
    assert choice["text"] == prompt
    lp = choice["logprobs"]
    words = prompt.split()
    assert lp["tokens"] == [words[0]] + [" " + w for w in words[1:]]
    assert lp["text_offset"] == [0, 3, 11, 15, 17, 21, 29]
    # OpenAI's first token has no log-probability: null (the client's types say float)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(words)):
        nxt = http.post("/v1/next-word", json={"text": " ".join(words[:i]), "top_k": 40}).json()[
            "next"
        ]
        probs = {w["word"]: w["prob"] for w in nxt}
        # the prompt is fed a word a pass here, at once there: float32 rounding apart
        assert lp["token_logprobs"][i] == pytest.approx(math.log(probs[words[i]]), rel=1e-5)
        best = max(probs, key=probs.__getitem__)
        (key, value), *_ = lp["top_logprobs"][i].items()
        assert key == " " + best and value == pytest.approx(math.log(probs[best]), rel=1e-5)
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}
    # echo and generation: the prompt, then the same words as without echo
    plain = complete(oai, prompt=prompt, max_tokens=4, temperature=0).choices[0]
    both = complete(
        oai.with_raw_response, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2
    ).http_response.json()["choices"][0]
    assert both["text"] == prompt + plain.text
    assert "".join(both["logprobs"]["tokens"]) == both["text"]


def test_logit_bias_by_word_and_by_id(oai, http):
    greedy = complete(oai, prompt=PROMPT, max_tokens=3, temperature=0).choices[0]
    first = greedy.text.split()[0]
    banned = complete(
        oai, prompt=PROMPT, max_tokens=3, temperature=0, logit_bias={first: -100}
    ).choices[0]
    assert banned.text.split()[0] != first
    comma = http.get("/v1/models/gru").json()["vocab"].index(",")
    forced = complete(
        oai, prompt=PROMPT, max_tokens=3, temperature=0, logit_bias={str(comma): 100}
    ).choices[0]
    assert forced.text == " , , ,"


def test_penalties_as_openai_defines_them():
    row = [0.0, 0.5, 0.3, 0.2]
    # logit_j - count_j * frequency - (count_j > 0) * presence + bias_j, then softmax
    logits = [
        -math.inf,
        math.log(0.5) - 2 * 1.0 - 0.5,
        math.log(0.3) - 1.0 - 0.5,
        math.log(0.2) + 1.0,
    ]
    z = sum(math.exp(x) for x in logits[1:])
    got = adjusted(row, (0.0, 0.0, 0.0, 1.0), {1: 2, 2: 1}, 0.5, 1.0)
    assert got == pytest.approx([0.0] + [math.exp(x) / z for x in logits[1:]])
    # the engine's generation counts its words and chooses greedily over the adjusted row
    params = SamplingParams(
        max_words=5, presence_penalty=0.5, frequency_penalty=1.0, logit_bias=(0.0, 0.0, 0.0, 1.0)
    )
    loop = asyncio.new_event_loop()
    gen = Generation(params, ("a", "b", "c", "d"), None, loop.create_future())
    loop.close()
    assert not gen.greedy()  # the penalties need the row: never the batch's argmax
    picks = [gen.choose(row) for _ in range(4)]
    want, counts = [], {}
    for _ in range(4):
        adj = adjusted(row, (0.0, 0.0, 0.0, 1.0), counts, 0.5, 1.0)
        word = max(range(4), key=adj.__getitem__)
        want.append(word)
        counts[word] = counts.get(word, 0) + 1
    assert picks == want and picks[0] == 3 and len(set(picks)) > 1


def test_frequency_penalty_changes_what_greedy_repeats(oai):
    plain = complete(oai, prompt=PROMPT, max_tokens=20, temperature=0).choices[0]
    pen = complete(oai, prompt=PROMPT, max_tokens=20, temperature=0, frequency_penalty=2.0).choices[
        0
    ]
    assert len(set(pen.text.split())) > len(set(plain.text.split()))


# -- sessions ------------------------------------------------------------------------------
@pytest.fixture
def session_http(store, backend) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru", **backend))) as c:
        yield c


def new_session(http: TestClient, text: str) -> str:
    r = http.post("/v1/sessions", json={"text": text})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


def test_sessions_through_extra_body_and_the_header(session_http):
    http = session_http
    oai = connect(http)
    a, b, c = (new_session(http, "one thousand one ,") for _ in range(3))
    ours = http.post(
        f"/v1/sessions/{a}/continuation", json={"text": "two ,", "max_words": 6}
    ).json()
    by_body = complete(
        oai, prompt="two ,", max_tokens=6, temperature=0, extra_body={"session_id": b}
    )
    by_header = complete(
        oai, prompt="two ,", max_tokens=6, temperature=0, extra_headers={"X-Session-ID": c}
    )
    assert by_body.choices[0].text == by_header.choices[0].text == " " + ours["text"]
    # the generated words advanced each session exactly alike
    after = [http.get(f"/v1/sessions/{s}").json() for s in (a, b, c)]
    assert len({(s["tokens_seen"], tuple(s["last_words"])) for s in after}) == 1
    nxt = [
        http.post(f"/v1/sessions/{s}/next-word", json={"text": ""}).json()["next"]
        for s in (a, b, c)
    ]
    assert nxt[0] == nxt[1] == nxt[2]
    with pytest.raises(openai.BadRequestError, match="one prompt and n = best_of = 1"):
        complete(oai, prompt="one", n=2, extra_body={"session_id": a})
    with pytest.raises(openai.NotFoundError, match="no session"):
        complete(oai, prompt="one", extra_body={"session_id": "nope"})


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "error", "message", "param"),
    [
        ({"prompt": "one", "frobnicate": 1}, openai.BadRequestError, "frobnicate", "frobnicate"),
        ({"prompt": "one", "suffix": " two"}, openai.BadRequestError, "suffix is not", "suffix"),
        (
            {"prompt": "one", "n": 3, "best_of": 2},
            openai.BadRequestError,
            "best_of is 2",
            "best_of",
        ),
        ({"prompt": "one", "logprobs": 31}, openai.BadRequestError, "between 0 and 30", "logprobs"),
        (
            {"prompt": "one", "max_tokens": 0},
            openai.BadRequestError,
            "max_tokens is 0",
            "max_tokens",
        ),
        ({"prompt": "one", "max_tokens": 201}, openai.BadRequestError, "MAX_WORDS", "max_tokens"),
        ({"prompt": "one", "stop": list("abcde")}, openai.BadRequestError, "at most 4", "stop"),
        ({"prompt": "one", "temperature": 3}, openai.BadRequestError, "temperature", "temperature"),
        ({"prompt": [], "max_tokens": 1}, openai.BadRequestError, "empty list", "prompt"),
        (
            {"prompt": "one", "logit_bias": {"99": 1}},
            openai.BadRequestError,
            "token id 99",
            "logit_bias",
        ),
        ({"prompt": "one", "model": "lstm"}, openai.NotFoundError, "no model 'lstm'", None),
        (
            {"prompt": "one eleventy"},
            openai.UnprocessableEntityError,
            "unknown word 'eleventy' at position 1",
            None,
        ),
        ({"prompt": [10, 99]}, openai.UnprocessableEntityError, "token id 99 at position 1", None),
        ({"prompt": ""}, openai.UnprocessableEntityError, "text has no words", None),
        ({"prompt": "one", "top_k": 41}, openai.UnprocessableEntityError, "top_k is 41", None),
    ],
)
def test_errors_raise_the_clients_exceptions(oai, args, error, message, param):
    extra = {k: args.pop(k) for k in list(args) if k in ("frobnicate", "top_k")}
    with pytest.raises(error, match=message) as e:
        complete(oai, extra_body=extra or None, **args)
    body = e.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["param"] == param
    assert e.value.response.headers["x-should-retry"] == "false"


def test_too_long_and_at_capacity(store):
    app = create_app(make_settings(store, DEFAULT_MODEL="gru", MAX_QUEUE=2, MAX_QUEUE_SHARE=1))

    async def scenario(c: httpx.AsyncClient) -> None:
        # one request holds the whole queue (2 jobs) for 200 words: the next is refused
        busy = asyncio.create_task(
            c.post("/v1/completions", json={"prompt": ["one", "two"], "max_tokens": 200})
        )
        while not busy.done() and not app.state.service.registry.resolve("gru").engine.queued:
            await asyncio.sleep(0)
        r = await c.post("/v1/completions", json={"prompt": ["three"], "max_tokens": 2})
        assert (await busy).status_code == 200
        assert r.status_code == 429 and "at capacity" in r.json()["error"]["message"], r.text
        assert r.headers["retry-after"] == "1" and "x-should-retry" not in r.headers
        assert r.json()["error"]["type"] == "rate_limit_error"

    run_app(app, scenario)
    with TestClient(create_app(make_settings(store, DEFAULT_MODEL="gru", MAX_QUEUE=2))) as http:
        oai = connect(http)
        with pytest.raises(openai.APIStatusError, match="this server takes at most") as e:
            complete(oai, prompt="one " * 3000, max_tokens=2)
        assert e.value.status_code == 413
        # nothing was left behind: the queue is free again; and a request of more choices
        # than its share of the queue (here 1 job) is served a job at a time, not refused
        assert len(complete(oai, prompt=["one", "two", "three"], max_tokens=2).choices) == 3


def test_our_routes_keep_their_error_shape(http):
    r = http.post("/v1/continuation", json={"text": "one", "frobnicate": 1})
    assert r.status_code == 422 and "detail" in r.json()
    r = http.get("/v1/models/lstm")
    assert r.status_code == 404 and r.json()["detail"].startswith("no model 'lstm'")


def test_swagger_documents_the_route_with_examples(http):
    spec = http.get("/openapi.json").json()
    op = spec["paths"]["/v1/completions"]["post"]
    examples = op["requestBody"]["content"]["application/json"]["examples"]
    assert {"batch", "stream", "echo"} <= set(examples)
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert spec["paths"]["/v1/models"]["get"]


def test_api_keys_guard_completions_and_their_sessions(store):
    """With keys on, the client's api_key is the Bearer key: a wrong one raises the client's
    AuthenticationError (OpenAI's error shape), and another key's session is not found."""
    keys = ("key-of-alice-0123456789", "key-of-bob-0123456789ab")
    settings = make_settings(store, DEFAULT_MODEL="gru", API_KEYS=",".join(keys))
    with TestClient(create_app(settings)) as http:

        def client(key: str) -> openai.OpenAI:
            return openai.OpenAI(
                base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0
            )

        with pytest.raises(openai.AuthenticationError) as e:
            complete(client("not-a-key-of-this-server"), prompt="one ,", max_tokens=1)
        assert e.value.status_code == 401
        assert "key" in e.value.message
        r = http.post("/v1/completions", json={"prompt": "one ,", "max_tokens": 1})
        assert r.status_code == 401 and set(r.json()["error"]) >= {"message", "type", "code"}

        alice, bob = client(keys[0]), client(keys[1])
        created = http.post(
            "/v1/sessions",
            json={"model": "gru", "text": "one ,"},
            headers={"Authorization": f"Bearer {keys[0]}"},
        )
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        out = complete(alice, prompt="two ,", max_tokens=1, extra_body={"session_id": sid})
        assert out.choices[0].text
        with pytest.raises(openai.NotFoundError):
            complete(bob, prompt="two ,", max_tokens=1, extra_body={"session_id": sid})
        seen = http.get(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {keys[0]}"})
        assert seen.json()["tokens_seen"] == 5  # alice's words and her one word, bob's none
