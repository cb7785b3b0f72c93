"""Recorded answers: a fixed set of requests, answered byte for byte as recorded.

The requests run in order against a committed checkpoint (tests/app/golden/store, gru-copy
trained 6 epochs), on each session store and with the hot routes on the fast path and on
FastAPI. What changes from run to run is masked before comparing (ids, timestamps, session
ids); everything else must be the bytes recorded: status, content type and body, errors
included. A restructure that changes one answer fails here.

On another CPU the last digits of a probability may differ; the comparison then falls back to
the numbers within 1e-6 (relative), every other byte still equal. Record again (only when an
answer is meant to change) with:

    GOLDEN_RECORD=1 python -m pytest tests/app/test_golden.py
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from launchers import TEST_DEVICE
from tests.app.conftest import make_settings, run_app

HERE = Path(__file__).parent / "golden"
STORE = HERE / "store"
ANSWERS = HERE / "answers.json"

COUNT = "one , two , three , four ,"
THOUSANDS = "eight thousand one hundred two , eight thousand one hundred three ,"

# (method, path, body): "{sid}" is the session the last POST /v1/sessions created.
REQUESTS: list[tuple[str, str, Any]] = [
    ("GET", "/health", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/gru-copy", None),
    ("GET", "/v1/models/nope", None),
    # next word
    ("POST", "/v1/next-word", {"text": COUNT}),
    ("POST", "/v1/next-word", {"text": THOUSANDS, "top_k": 5}),
    ("POST", "/v1/next-word", {"text": "one , two , blue"}),
    ("POST", "/v1/next-word", {"text": ""}),
    ("POST", "/v1/next-word", {"text": COUNT, "top_k": 0}),
    ("POST", "/v1/next-word", {"text": COUNT, "top_k": 500}),
    ("POST", "/v1/next-word", {"text": COUNT, "model": "nope"}),
    ("POST", "/v1/next-word", {"text": COUNT, "extra": 1}),
    ("POST", "/v1/next-word", "not json"),
    # continuation
    ("POST", "/v1/continuation", {"text": COUNT, "max_words": 12}),
    ("POST", "/v1/continuation", {"text": THOUSANDS, "max_words": 20, "stop": [","]}),
    (
        "POST",
        "/v1/continuation",
        {"text": COUNT, "max_words": 15, "temperature": 0.9, "top_k": 5, "seed": 7},
    ),
    (
        "POST",
        "/v1/continuation",
        {"text": COUNT, "max_words": 15, "temperature": 1.3, "top_p": 0.8, "seed": 11},
    ),
    ("POST", "/v1/continuation", {"text": COUNT, "max_words": 8, "stream": True}),
    ("POST", "/v1/continuation", {"text": COUNT, "max_words": 8, "stop": ["blue"]}),
    ("POST", "/v1/continuation", {"text": COUNT, "max_words": 100000}),
    ("POST", "/v1/continuation", {"text": COUNT, "temperature": -1}),
    # sessions
    ("POST", "/v1/sessions", {"text": "one , two ,", "top_k": 3}),
    ("POST", "/v1/sessions/{sid}/next-word", {"text": "three ,", "top_k": 2}),
    ("POST", "/v1/sessions/{sid}/continuation", {"max_words": 10}),
    ("POST", "/v1/sessions/{sid}/continuation", {"text": "", "max_words": 6, "stream": True}),
    ("GET", "/v1/sessions/{sid}", None),
    ("POST", "/v1/sessions/{sid}/next-word", {"text": "blue"}),
    ("POST", "/v1/sessions/{sid}/continuation", {"max_words": 3, "stop": [","]}),
    ("POST", "/v1/sessions/{sid}/reset", None),
    ("POST", "/v1/sessions/{sid}/continuation", {"max_words": 3}),
    ("POST", "/v1/sessions/{sid}/next-word", {"text": ""}),
    ("DELETE", "/v1/sessions/{sid}", None),
    ("GET", "/v1/sessions/{sid}", None),
    ("POST", "/v1/sessions", {}),
    ("POST", "/v1/sessions/{sid}/continuation", {"max_words": 3}),
    ("POST", "/v1/sessions", {"model": "nope"}),
    ("GET", "/v1/sessions?limit=0", None),
    ("GET", "/v1/sessions?cursor=%%%", None),
    # OpenAI completions
    ("POST", "/v1/completions", {"prompt": COUNT, "max_tokens": 8, "temperature": 0}),
    (
        "POST",
        "/v1/completions",
        {"prompt": [COUNT, THOUSANDS], "max_tokens": 6, "temperature": 0, "logprobs": 3},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 5, "temperature": 0, "echo": True, "logprobs": 2},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 12, "n": 2, "best_of": 4, "seed": 3},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 12, "temperature": 0, "stop": ["seven", "nine ,"]},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 12, "temperature": 0, "stop": "ve"},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 10, "temperature": 0, "logit_bias": {" seven": 5}},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 10, "seed": 5, "presence_penalty": 1.5},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": COUNT, "max_tokens": 10, "temperature": 0, "frequency_penalty": 2},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": [12, 9, 13, 9, 14, 9], "max_tokens": 4, "logprobs": 1, "seed": 2},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": [[12, 9], [20, 9]], "max_tokens": 3, "echo": True, "seed": 9},
    ),
    ("POST", "/v1/completions", {"prompt": [5, 1, 6, 1], "max_tokens": 4, "temperature": 0}),
    (
        "POST",
        "/v1/completions",
        {
            "prompt": COUNT,
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "POST",
        "/v1/completions",
        {
            "prompt": [COUNT, "ten ,"],
            "max_tokens": 4,
            "temperature": 0,
            "stream": True,
            "logprobs": 2,
            "echo": True,
            "stop": [" six"],
        },
    ),
    ("POST", "/v1/completions", {"prompt": COUNT, "n": 3, "best_of": 2}),
    ("POST", "/v1/completions", {"prompt": COUNT, "suffix": "x"}),
    ("POST", "/v1/completions", {"prompt": "one , blue", "max_tokens": 2}),
    ("POST", "/v1/completions", {"prompt": COUNT, "max_tokens": 10**9}),
    ("POST", "/v1/completions", {"prompt": COUNT, "logprobs": 99}),
    ("POST", "/v1/completions", {"prompt": COUNT, "model": "nope"}),
    ("POST", "/v1/completions", {"prompt": COUNT, "stream": True, "best_of": 3, "n": 1}),
    ("POST", "/v1/completions", {"max_tokens": 3}),
    ("POST", "/v1/sessions", {"text": "five , six ,"}),
    (
        "POST",
        "/v1/completions",
        {"prompt": "seven ,", "max_tokens": 6, "session_id": "{sid}", "seed": 4},
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": "", "max_tokens": 4, "session_id": "{sid}", "temperature": 0, "stream": True},
    ),
    ("GET", "/v1/sessions/{sid}", None),
    # neither a route nor a method
    ("GET", "/v1/nowhere", None),
    ("GET", "/v1/next-word", None),
]

# What differs between two runs of the same requests.
MASKS = [
    (re.compile(r'"id":"cmpl-[0-9a-f]+"'), '"id":"cmpl-<id>"'),
    (re.compile(r'"created":\d+'), '"created":<t>'),
    (re.compile(r'"(created_at|expires_at)":"[^"]+"'), r'"\1":"<t>"'),
    (re.compile(r'"(request_id)":"[^"]+"'), r'"\1":"<id>"'),
    # the device they ran on (TEST_DEVICE cuda on the GPU machine): recorded on the CPU
    (re.compile(r'"device":"cuda(:\d+)?"'), '"device":"cpu"'),
]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def masked(text: str, sid: str | None) -> str:
    for pattern, to in MASKS:
        text = pattern.sub(to, text)
    if sid:
        text = text.replace(sid, "<sid>")
    return text


async def answers(c: httpx.AsyncClient) -> list[dict[str, Any]]:
    out, sid = [], None
    for method, path, body in REQUESTS:
        label = f"{method} {path} {json.dumps(body)}"
        url = path.replace("{sid}", sid or "none")
        if isinstance(body, str):
            r = await c.request(
                method, url, content=body, headers={"content-type": "application/json"}
            )
        else:
            if isinstance(body, dict) and body.get("session_id") == "{sid}":
                body = {**body, "session_id": sid}
            r = await c.request(method, url, json=body)
        if method == "POST" and path == "/v1/sessions" and r.status_code == 201:
            sid = r.json()["session_id"]
        out.append(
            {
                "request": label,
                "status": r.status_code,
                "type": r.headers.get("content-type"),
                "body": masked(r.text, sid),
            }
        )
    return out


# Numbers may differ this much (relative): 1e-6 on another CPU; on a GPU (TEST_DEVICE cuda)
# cuDNN sums in another order, and a probability moved by up to 6e-6 (scripts/gpu-check.sh).
REL_TOL = 1e-6 if TEST_DEVICE == "cpu" else 1e-4


def same(recorded: str, now: str) -> bool:
    """Equal bytes, or equal but for numbers within REL_TOL of each other."""
    if recorded == now:
        return True
    if NUMBER.sub("#", recorded) != NUMBER.sub("#", now):
        return False
    return all(
        math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-12)
        for a, b in zip(NUMBER.findall(recorded), NUMBER.findall(now), strict=True)
    )


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_answers_are_the_recorded_ones(fast_path: bool, backend: dict[str, Any]) -> None:
    settings = make_settings(STORE, FAST_PATH=fast_path, **backend)
    got = run_app(create_app(settings), answers)
    if os.environ.get("GOLDEN_RECORD") and fast_path and backend["SESSION_BACKEND"] == "memory":
        ANSWERS.write_text(json.dumps(got, indent=1) + "\n")
    recorded = json.loads(ANSWERS.read_text())
    assert [a["request"] for a in recorded] == [a["request"] for a in got], "the requests changed"
    for want, have in zip(recorded, got, strict=True):
        assert (have["status"], have["type"]) == (want["status"], want["type"]), want["request"]
        assert same(want["body"], have["body"]), (want["request"], want["body"], have["body"])
