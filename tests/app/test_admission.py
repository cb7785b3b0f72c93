"""Bounded work (issue 17, rows 1, 2, 5, 6): one request or client cannot take the memory, the
engine's queue, or work nobody waits for. Each test is its row's reproduction, on a real
server process whose memory it reads from /proc (sizes scaled to a 2-core CI machine where the
row's own would not fit); the bounds on time and memory are generous, the answers exact."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from launchers import AppProcess
from model_store import save_checkpoint
from tests.app.conftest import make_settings, run_app
from training.data import load_data
from training.loop import RECIPES, train

MIB = 1 << 20
BUDGET = 64 * MIB  # one request's own memory, as the settings' defaults promise


def status(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS: now; VmHWM: the peak since the reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


@pytest.fixture(scope="module")
def gru_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gru alone, one epoch (seconds): these tests need a model, not a good one."""
    root = tmp_path_factory.mktemp("gru-store")
    data = load_data()
    config = replace(RECIPES["gru"], epochs=1, device="cpu")
    result = train(config, data, progress=False, log=lambda _: None)
    save_checkpoint(root, "gru", result.model, data.vocab, metrics=result.metrics)
    return root


@pytest.fixture(scope="module")
def server(gru_store: Path) -> Iterator[AppProcess]:
    app = AppProcess(gru_store, ACCESS_LOG="false").start()
    try:
        yield app
    finally:
        app.kill()


@pytest.fixture(scope="module")
def long_server(gru_store: Path) -> Iterator[AppProcess]:
    """One that takes requests of 409,600 words (the rows' own), which last long enough to
    see them stop on any machine, and ends unread streams after 1 s."""
    env = {"MAX_REQUEST_TOKENS": "1000000", "STREAM_WRITE_TIMEOUT_SECONDS": "1"}
    app = AppProcess(gru_store, ACCESS_LOG="false", **env).start()
    try:
        yield app
    finally:
        app.kill()


def measured(server: AppProcess, body: dict[str, Any]) -> tuple[Any, float, int]:
    """POST /v1/completions; the response, its seconds, and the server's peak RSS growth."""
    assert server.proc is not None
    pid = server.proc.pid
    with server.client() as c:
        c.post("/v1/completions", json={"prompt": "one two", "max_tokens": 2})  # warm
        reset_peak(pid)
        before = status(pid, "VmRSS")
        t = time.monotonic()
        r = c.post("/v1/completions", json=body)
        seconds = time.monotonic() - t
    return r, seconds, status(pid, "VmHWM") - before


def error(r: Any, param: str) -> str:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    return str(err["message"])


# -- rows 1 and 2: admission before allocation ---------------------------------------------
def test_row1_choices_refused_before_any_is_built(server):
    """50,000 one-token prompts x best_of 128 (300 KB): 6.4 million choices. It was 4.5 GB
    and a 22 s stall; now a 400 naming best_of, the figure and MAX_CHOICES, at once."""
    body = {"prompt": [[12]] * 50_000, "best_of": 128, "max_tokens": 1}
    r, seconds, grew = measured(server, body)
    message = error(r, "best_of")
    assert "6,400,000 choices (50,000 prompts x best_of 128)" in message
    assert "at most 2,048" in message and "MAX_CHOICES" in message
    assert seconds < 5, seconds  # parsing the 300 KB body is most of it
    assert grew < 64 * MIB, grew / MIB


def test_row2_echo_logprobs_refused_before_any_is_scored(server):
    """3 prompts of 2,500 words x n 128, echo, logprobs 30 (30 KB): 960,000 tokens and 30
    million log-probabilities. It peaked at 7.8 GB; now a 400 on the tokens, and with n 8
    (within the tokens) a 400 on the log-probabilities."""
    prompt = ["one " * 2500] * 3
    body = {"prompt": prompt, "n": 128, "max_tokens": 0, "echo": True, "logprobs": 30}
    r, seconds, grew = measured(server, body)
    message = error(r, "prompt")
    assert "960,000 tokens" in message and "at most 200,000" in message, message
    assert "MAX_REQUEST_TOKENS" in message
    assert seconds < 5 and grew < 64 * MIB, (seconds, grew / MIB)

    r, seconds, grew = measured(server, {**body, "n": 8})
    message = error(r, "logprobs")
    assert "1,860,000 log-probabilities (60,000 scored tokens x (logprobs 30 + 1))" in message
    assert "at most 60,000" in message and "MAX_LOGPROB_ENTRIES" in message
    assert seconds < 5 and grew < 64 * MIB, (seconds, grew / MIB)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"prompt": [[12]] * 2048, "max_tokens": 96, "temperature": 0}, id="most-choices"
        ),
        pytest.param(
            {"prompt": "one " * 2500, "max_tokens": 0, "echo": True, "logprobs": 23},
            id="most-logprobs",
        ),
    ],
)
def test_the_largest_request_allowed_stays_within_the_budget(server, body):
    """What the defaults still allow (2,048 choices of 97 tokens; 2,500 echoed words x 24
    log-probabilities = 60,000) is served, and takes less than the 64 MiB budget."""
    r, _, grew = measured(server, body)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == (2048 if isinstance(body["prompt"], list) else 1)
    assert grew < BUDGET, grew / MIB


# -- row 5: a fair share of the engine -----------------------------------------------------
@pytest.mark.parametrize("share", [1.0, 0.25], ids=["whole-queue", "default-share"])
def test_row5_one_request_cannot_fill_the_queue(gru_store, share):
    """One completion of 200 choices x 150 words on a queue of 256 (the row: 4,096 choices on
    4,096) while another client sends 8 requests of 16 prompts at once. Holding the whole
    queue (as before), the large request makes the other client's requests 429; with its
    share (MAX_QUEUE_SHARE) it holds at most 64 jobs at once, every other request gets 200,
    and they all end before it: its words are interleaved with theirs."""
    app = create_app(make_settings(gru_store, MAX_QUEUE=256, MAX_QUEUE_SHARE=share))
    big = {"prompt": ["one two"] * 2, "n": 100, "max_tokens": 150, "temperature": 1, "seed": 7}
    small = {"prompt": ["three four"] * 16, "max_tokens": 5, "temperature": 0}

    async def scenario(c: httpx.AsyncClient) -> None:
        engine = app.state.service.registry.models["gru"].engine
        held = 0  # the large request's jobs in the engine at most

        async def watch() -> None:
            nonlocal held
            while True:
                jobs = [*engine._queue, *engine._running]
                held = max(held, sum(1 for j in jobs if j.gen and j.gen.params.max_words == 150))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        large = asyncio.create_task(c.post("/v1/completions", json=big, timeout=120))
        while not held and not large.done():
            await asyncio.sleep(0)
        others = await asyncio.gather(
            *(c.post("/v1/completions", json=small, timeout=120) for _ in range(8))
        )
        large_first = large.done()
        r = await large
        watcher.cancel()
        codes = sorted(o.status_code for o in others)
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 200
        assert all(len(ch["text"].split()) == 150 for ch in r.json()["choices"])
        if share == 1.0:  # the row as reported: the other client is refused
            assert held == 200 and 429 in codes, (held, codes)
            return
        assert held <= 64, held
        assert codes == [200] * 8, codes
        assert not large_first, "the small requests waited for the large one"

    run_app(app, scenario)


# -- row 6: work stops when its client leaves ------------------------------------------------
def generated_words(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith('model_generated_words_total{model="gru",version="1"}'):
            return float(line.split()[-1])
    return 0.0


def words_until_still(c: httpx.Client, start: float, seconds: float = 30) -> list[float]:
    """The words generated since `start`, read every half second until two reads agree."""
    counts = [generated_words(c) - start]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        counts.append(generated_words(c) - start)
        if counts[-1] == counts[-2]:
            break
    return counts


def test_row6_a_completion_whose_client_left_stops(long_server):
    """2,048 choices x 200 words, not streamed, whose client gives up after half a second.
    It used to run on to all 409,600 words; now the words stop within moments of the client
    leaving, and the memory it took is given back."""
    server = long_server
    assert server.proc is not None
    pid = server.proc.pid
    total = 2048 * 200
    body = {"prompt": [[12, 13]] * 2048, "max_tokens": 200, "temperature": 0}
    with server.client() as c:
        start = generated_words(c)
        before = status(pid, "VmRSS")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base}/v1/completions", json=body, timeout=0.5)
        counts = words_until_still(c, start)
        assert counts[-1] == counts[-2], counts
        assert counts[-1] < total / 2, (counts, total)
        assert c.post("/v1/completions", json={"prompt": "one", "max_tokens": 1}).status_code == 200
        assert status(pid, "VmRSS") - before < BUDGET


# -- row 2, its second part: streams that nobody reads ------------------------------------------
def test_row2_streams_nobody_reads_are_ended(long_server):
    """Three streams of 2,048 choices x 200 words whose client never reads (a 4 KB receive
    buffer, nothing read). They used to generate every word and hold it until the client
    left; now each ends once a write has waited STREAM_WRITE_TIMEOUT_SECONDS (1 s here): the
    words stop long before the end, the stream closes without its [DONE], and the memory
    is given back."""
    server = long_server
    assert server.proc is not None
    pid = server.proc.pid
    total = 3 * 2048 * 200
    body = json.dumps(
        {"prompt": [[12, 13]] * 2048, "max_tokens": 200, "temperature": 0, "stream": True}
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with server.client() as c:
        start = generated_words(c)
        before = status(pid, "VmRSS")
        sockets = []
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(head + body)
            sockets.append(s)
        try:
            counts = words_until_still(c, start)
            assert counts[-1] == counts[-2], counts
            assert counts[-1] < total / 2, (counts, total)
            for s in sockets:  # what was written before the end, then the close
                s.settimeout(30)
                received = b""
                while chunk := s.recv(1 << 20):
                    received += chunk
                assert received.startswith(b"HTTP/1.1 200"), received[:200]
                assert b"data: [DONE]" not in received[-1000:]
        finally:
            for s in sockets:
                s.close()
        assert c.post("/v1/completions", json={"prompt": "one", "max_tokens": 1}).status_code == 200
        assert status(pid, "VmRSS") - before < BUDGET


def test_a_window_at_a_time_gives_the_same_answers(gru_store):
    """With a window of 4 jobs (MAX_QUEUE 16 x 0.25), 3 prompts x n 4 (12 choices) with echo
    and logprobs give, streamed and not, what a window of all 12 gives: every choice whole,
    in order."""
    body = {
        "prompt": ["one two", "three four", "five six"],
        "n": 4,
        "max_tokens": 5,
        "temperature": 0,
        "echo": True,
        "logprobs": 2,
    }
    answers = []
    for queue in (16, 4096):
        with TestClient(create_app(make_settings(gru_store, MAX_QUEUE=queue))) as c:
            whole = c.post("/v1/completions", json=body).json()
            streamed = c.post("/v1/completions", json={**body, "stream": True}).text
        events = [line[6:] for line in streamed.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        texts = [""] * 12
        finished = [None] * 12
        for e in map(json.loads, events[:-1]):
            (ch,) = e["choices"]
            texts[ch["index"]] += ch["text"]
            finished[ch["index"]] = finished[ch["index"]] or ch["finish_reason"]
        assert texts == [ch["text"] for ch in whole["choices"]]
        assert finished == ["length"] * 12
        for ch in whole["choices"]:
            del ch["index"]
        answers.append((whole["choices"], whole["usage"]))
    assert answers[0] == answers[1]
