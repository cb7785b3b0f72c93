"""The connection bounds of `python -m app` on granian (SERVER=granian, app.api.granian_server),
which are granian's own, not uvicorn's (tests/app/test_connections.py): what it really does
with slow-loris heads, idle connections, a huge header line and a flood past MAX_CONNECTIONS.
Each is cut off in bounded time and memory while a normal client keeps getting answers; where
uvicorn answers 408 or 503 in JSON, granian closes without a word, or makes the newcomer wait.
The app's own bounds (bodies, the drain) are the same on both: their tests run on both."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from launchers import AppProcess
from tests.app.test_connections import (
    GET_HEALTH,
    MIB,
    huge_header_line,
    normal_client,
    one_response,
    open_fds,
    rss,
    slow_bodies_get_408,
    slow_heads,
)

CAP = 50  # MAX_CONNECTIONS


@pytest.fixture(scope="module")
def server(store) -> Iterator[AppProcess]:
    app = AppProcess(
        store,
        SERVER="granian",
        ACCESS_LOG="false",
        HEADER_TIMEOUT_SECONDS="1",
        BODY_TIMEOUT_SECONDS="1",
        MAX_CONNECTIONS=str(CAP),
    ).start()
    yield app
    app.kill()


def closed_within(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the server sends before it closes (nothing, for a head cut off)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def fds_back_to(pid: int, most: int, within_s: float = 5) -> int:
    deadline = time.monotonic() + within_s
    while open_fds(pid) > most and time.monotonic() < deadline:
        time.sleep(0.1)
    return open_fds(pid)


def test_slow_loris_heads_are_cut_off_at_the_deadline_without_an_answer(server):
    """hyper's header read timeout (HEADER_TIMEOUT_SECONDS): a head not in by then is cut off,
    the connection closed with no 408 (uvicorn answers one); the others are served meanwhile."""
    pid = server.proc.pid
    rss0, fds0 = rss(pid), open_fds(pid)
    start = time.monotonic()
    loris = slow_heads(server.port, CAP - 10)
    assert max(normal_client(server.base)) < 2.0
    for s in loris:
        assert closed_within(s) == b""
        s.close()
    assert time.monotonic() - start < 5
    assert fds_back_to(pid, fds0 + 2) <= fds0 + 2  # every one closed
    assert rss(pid) - rss0 < 50 * MIB
    # a connection that sends nothing is closed at the deadline too
    idle = socket.create_connection(("127.0.0.1", server.port))
    begun = time.monotonic()
    assert closed_within(idle) == b""
    assert 0.8 < time.monotonic() - begun < 3.0
    idle.close()


def test_between_requests_the_head_deadline_runs_from_the_last_answer(server):
    """No keep-alive timeout of its own: an idle kept-alive connection is closed
    HEADER_TIMEOUT_SECONDS after its last answer (uvicorn: 5 s), and a later head must be in
    within that same deadline, idle time included (uvicorn: from the head's first byte)."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(GET_HEALTH)
    assert one_response(s) == 200
    answered = time.monotonic()
    assert closed_within(s) == b""
    assert 0.8 < time.monotonic() - answered < 3.0
    s.close()
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # 0.3 + 0.3 s: in time
        s.sendall(GET_HEALTH)
        assert one_response(s) == 200
        time.sleep(0.3)
        s.sendall(GET_HEALTH[:10])
        time.sleep(0.3)
        s.sendall(GET_HEALTH[10:])
        assert one_response(s) == 200
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # 0.5 + 0.8 s: too late
        s.sendall(GET_HEALTH)
        assert one_response(s) == 200
        time.sleep(0.5)
        s.sendall(GET_HEALTH[:10])
        time.sleep(0.8)
        with contextlib.suppress(OSError):  # closed already: the send may be refused
            s.sendall(GET_HEALTH[10:])
        assert closed_within(s) == b""


def test_past_max_connections_new_connections_wait_to_be_accepted(server):
    """granian's backpressure (MAX_CONNECTIONS): at most CAP connections are accepted; the
    next ones wait in the listen queue, unanswered, until some close (uvicorn closes the
    slowest head for a newcomer, or answers it 503). So the file descriptors stay bounded, and
    a normal client behind a flood of slow heads is served once their deadline cuts them."""
    pid = server.proc.pid
    fds0 = open_fds(pid)
    flood = slow_heads(server.port, CAP + 30)
    time.sleep(0.3)
    assert open_fds(pid) <= fds0 + CAP + 2  # the rest wait in the kernel's queue
    start = time.monotonic()
    r = httpx.get(f"{server.base}/health", timeout=10)
    waited = time.monotonic() - start
    assert r.status_code == 200
    assert 0.5 < waited < 5.0  # it waited for the heads before it to be cut off (1 s)
    for s in flood:
        assert closed_within(s) == b""
        s.close()
    assert fds_back_to(pid, fds0 + 2) <= fds0 + 2
    assert max(normal_client(server.base, 5)) < 2.0


def test_a_huge_header_line_gets_an_empty_431_as_it_arrives(server):
    """A head past granian's read buffer (MAX_HEADER_BYTES + 4 KiB) gets hyper's own 431, no
    body, as it arrives; a head past MAX_HEADER_BYTES that fits the buffer gets the app's JSON
    431, as on uvicorn. Either way in bounded time and memory, and the others are served."""
    got = huge_header_line(server, closed_within)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and body == b""
    assert b"connection: close" in head.lower()
    # just past MAX_HEADER_BYTES, within the buffer: the app's answer
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n")
        head, _, body = closed_within(s).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert body.endswith(b'this server takes at most 16,384 (MAX_HEADER_BYTES)"}')


def test_slow_bodies_get_408_at_the_deadline_and_the_server_goes_on(server):
    """The app's own body deadline (BODY_TIMEOUT_SECONDS): the same as on uvicorn."""
    slow_bodies_get_408(server)
