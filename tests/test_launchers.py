"""The launchers the tests and the benchmarks share (launchers.py)."""

import socket

import pytest
import redis

from launchers import AppProcess, RedisServer, free_port


def test_a_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_redis_server_answers_then_stops(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        assert redis.Redis.from_url(server.url).ping()
        proc = server.proc
    assert proc is not None and proc.poll() is not None
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url).ping()


def test_an_app_that_cannot_start_says_why(tmp_path):
    app = AppProcess(tmp_path / "empty", LOG_LEVEL="warning")
    with pytest.raises(RuntimeError, match=r"(?s)server exited at start-up.*no usable checkpoint"):
        app.start()
    assert app.proc is not None and app.proc.returncode != 0
