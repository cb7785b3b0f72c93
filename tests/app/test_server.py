"""The README's command, for real: `python -m app` on a free port, called over HTTP."""

import json
import signal
import subprocess
import sys

import httpx
import pytest

from launchers import AppProcess, free_port


@pytest.fixture(params=["uvicorn", "granian"])
def server(store, request):
    app = AppProcess(store, MAX_SESSIONS="3", SERVER=request.param).start()
    yield app.base, app
    app.kill()


STOPPED = {  # each server's own last words, in its own plain-text log
    "uvicorn": "Finished server process",
    "granian": "Shutting down granian",
}


def test_real_server(server):
    base, proc = server
    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.post("/v1/next-word", json={"text": "one , two ,"})
        assert r.status_code == 200 and len(r.json()["next"]) == 5
        top = r.json()["next"][0]["word"]
        s = c.post("/v1/sessions", json={"text": "one , two ,"}).json()
        assert s["next"][0]["word"] == top
        r = c.post(f"/v1/sessions/{s['session_id']}/continuation", json={"max_words": 3})
        assert r.status_code == 200 and r.json()["words"][0] == top
        with c.stream(
            "POST", "/v1/continuation", json={"text": "one", "stream": True, "max_words": 2}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert sum(1 for ln in r.iter_lines() if ln.startswith("data:")) == 3
        for _ in range(2):  # settings from the environment: MAX_SESSIONS=3
            c.post("/v1/sessions", json={})
        assert c.post("/v1/sessions", json={}).status_code == 429
        assert "http_requests_total" in c.get("/metrics").text
        # behind a proxy on this host (a trusted peer: FORWARDED_ALLOW_IPS 127.0.0.1), the
        # client is the one X-Forwarded-For names, on either server
        assert c.get("/health", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    # graceful shutdown: the server stops cleanly, then re-raises the signal in the exit status
    assert proc.stop() in (0, -signal.SIGTERM)
    out = proc.output
    assert STOPPED[proc.env["SERVER"]] in out
    assert "Internal Server Error" not in out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"logger": "app.access", "route": "/v1/next-word", "status": 200}.items() <= next(
        e for e in lines if e.get("route") == "/v1/next-word"
    ).items()  # structured access log, written by the end
    assert lines[-1]["message"] == "stopped"
    health = [e for e in lines if e.get("route") == "/health"]
    assert health and health[-1]["client"].startswith("203.0.113.7:")


@pytest.mark.parametrize("server_name", ["uvicorn", "granian"])
def test_refuses_to_start_without_a_usable_model(tmp_path, server_name):
    args = ["--store", str(tmp_path), "--port", str(free_port()), "--server", server_name]
    r = subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert f"no usable checkpoint in {tmp_path}: it holds no checkpoints" in r.stderr
