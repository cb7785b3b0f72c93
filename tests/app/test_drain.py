"""The drain of the real server (`python -m app`, app.api.shutdown's DrainingServer; with
SERVER=granian, app.api.granian_server's, held to the same): SIGTERM while 32 streams are open
and requests flow. /ready turns 503 within 100 ms, every open stream ends normally, no request
that arrived before the signal fails, new ones get the drain's 503 (nothing done: a proxy
retries them elsewhere), and the process exits once the streams are done, long before
DRAIN_SECONDS. (BATCH_WAIT_MS=50: every word takes about 50 ms, so 60-word streams are still
open seconds after the signal.)"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from launchers import AppProcess

STREAMS = 32
WORDS = 60


def stream(base: str, first: threading.Event, events: list[dict], failures: list) -> None:
    body = {"text": "one ,", "max_words": WORDS, "stream": True, "model": "gru-copy"}
    try:
        with httpx.stream("POST", f"{base}/v1/continuation", json=body, timeout=60) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    first.set()
    except Exception as e:  # told to the test, which fails on it
        failures.append(repr(e))
        first.set()


def flow(base: str, stop: threading.Event, seen: list[tuple[float, float, object]]) -> None:
    """Session next-words one after another: (sent, answered, status or the error)."""
    with httpx.Client(base_url=base, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"]
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = c.post(f"/v1/sessions/{sid}/next-word", json={"text": "two ,"})
                seen.append((sent, time.monotonic(), (r.status_code, r.json())))
            except httpx.TransportError as e:  # the server is gone: nothing listens
                seen.append((sent, time.monotonic(), e))
                return


def ready_probe(base: str, stop: threading.Event, seen: list[tuple[float, int]]) -> None:
    with httpx.Client(base_url=base, timeout=5) as c:
        while not stop.is_set():
            try:
                seen.append((time.monotonic(), c.get("/ready").status_code))
            except httpx.TransportError:
                return
            time.sleep(0.005)


SERVERS = pytest.mark.parametrize("server_name", ["uvicorn", "granian"])  # the same drain


@SERVERS
def test_sigterm_drains_streams_and_requests_in_flight(store, server_name):
    server = AppProcess(
        store, DRAIN_SECONDS="20", BATCH_WAIT_MS="50", ACCESS_LOG="false", SERVER=server_name
    )
    server.start()
    try:
        firsts = [threading.Event() for _ in range(STREAMS)]
        events: list[list[dict]] = [[] for _ in range(STREAMS)]
        failures: list[str] = []
        threads = [
            threading.Thread(target=stream, args=(server.base, firsts[i], events[i], failures))
            for i in range(STREAMS)
        ]
        stop = threading.Event()
        flows: list[tuple[float, float, object]] = []
        probes: list[tuple[float, int]] = []
        threads += [
            threading.Thread(target=flow, args=(server.base, stop, flows)),
            threading.Thread(target=ready_probe, args=(server.base, stop, probes)),
        ]
        for t in threads:
            t.start()
        assert all(e.wait(30) for e in firsts) and not failures, failures
        assert max(len(e) for e in events) < WORDS  # every stream is still open
        time.sleep(0.3)  # requests flow
        signalled = time.monotonic()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        exited = time.monotonic()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        server.kill()

    # /ready: 200 before the signal, 503 from within 100 ms of it on
    assert any(status == 200 for t, status in probes if t < signalled)
    first_503 = min((t for t, status in probes if status == 503), default=None)
    assert first_503 is not None, "/ready never said 503"
    assert first_503 - signalled < 0.1
    assert all(status == 503 for t, status in probes if t > first_503)
    # every stream ends normally: all its words, then its finish_reason
    assert not failures, failures
    for got in events:
        assert len(got) == WORDS + 1 and got[-1] == {"finish_reason": "length"}, got[-3:]
    # requests: the ones that arrived before the signal answered; later ones the drain's 503
    # (nothing of them done), or, once the server is gone, no connection
    answered = [status for sent, _, status in flows if sent < signalled - 0.05]
    assert answered and all(s[0] == 200 for s in answered if isinstance(s, tuple))
    assert all(isinstance(s, tuple) for s in answered), answered
    refused = [s for _, _, s in flows if isinstance(s, tuple) and s[0] != 200]
    assert refused, "no request came while the streams drained"
    for status, body in refused:
        assert status == 503 and "draining" in body["detail"], (status, body)
    # it exited once the streams were done: well before DRAIN_SECONDS
    assert exited - signalled < 10
    assert code == -signal.SIGTERM  # the signal re-raised once shut down (as uvicorn does)


@SERVERS
def test_a_second_sigterm_cuts_what_runs(store, server_name):
    """The drain waits for a stream that would take a minute; a second SIGTERM ends it at
    once: the stream gets its error event, and the process is gone within moments."""
    server = AppProcess(
        store, DRAIN_SECONDS="60", BATCH_WAIT_MS="300", ACCESS_LOG="false", SERVER=server_name
    )
    server.start()
    try:
        first, events, failures = threading.Event(), [], []
        t = threading.Thread(target=stream, args=(server.base, first, events, failures))
        t.start()
        assert first.wait(30) and not failures, failures
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert server.proc.poll() is None  # draining: the stream goes on
        second = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(15)
        assert time.monotonic() - second < 5
        t.join(15)
    finally:
        server.kill()
    assert not failures, failures
    assert 2 <= len(events) < WORDS and events[-1]["error"].startswith("the server is shutting")
