"""The app in process: a lone session next-word through the ASGI app, no network, no uvicorn.

    python -m benchmarks.inprocess --store /tmp/st
    python -m benchmarks.inprocess --store /tmp/st --before /tmp/base --runs 3
    (/tmp/base: `git worktree add /tmp/base REV`, its C step built there with
    `python setup.py build_ext --inplace`)

Prints the microseconds a request takes (the median of --rounds rounds of --requests requests,
one at a time, on one session of gru-copy, as deployed: API keys, the access log, metrics) and
the engine's pass a request (`Engine._run`, timed around). Steadier than a run through the
network for what our own Python costs a lone request: no kernel, no client, no other process
on the loop. With --before (another tree of this repo), that tree and this one in turn, each in
its own process, --runs times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEY = "k-bench-1234567890abcdef"


async def measure(store: Path, requests: int, rounds: int) -> tuple[float, float]:
    """(us a request, us a pass) of this tree's app."""
    os.environ.update(
        {
            "STORE": str(store),
            "DEFAULT_MODEL": "gru-copy",
            "API_KEYS": KEY,
            "ACCESS_LOG": "true",
            "LOG_LEVEL": "info",
        }
    )
    from app.core.config import Settings
    from app.main import create_app

    app = create_app(Settings())
    async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
        engine = app.state.service.registry.models["gru-copy"].engine
        inner, spent = engine._run, [0.0, 0]

        def timed(batch: Any) -> None:
            t = time.perf_counter()
            inner(batch)
            spent[0] += time.perf_counter() - t
            spent[1] += 1

        engine._run = timed
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def call(path: str, body: bytes) -> None:
            headers = [
                (b"host", b"x"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", f"Bearer {KEY}".encode()),
            ]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                return messages.pop() if messages else {"type": "http.disconnect"}

            sent.clear()
            await app(scope, receive, send)
            assert sent[0]["status"] in (200, 201), sent

        await call("/v1/sessions", b'{"text": "one ,"}')
        path = f"/v1/sessions/{json.loads(sent[-1]['body'])['session_id']}/next-word"
        body = b'{"text": "one", "top_k": 5}'
        for _ in range(500):
            await call(path, body)
        spent[:] = [0.0, 0]
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(requests):
                await call(path, body)
            times.append((time.perf_counter() - t) / requests * 1e6)
        return statistics.median(times), spent[0] / spent[1] * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, required=True, help="a store with gru-copy")
    p.add_argument("--requests", type=int, default=2000, help="requests a round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--before", type=Path, help="another tree of this repo, measured in turn")
    p.add_argument("--runs", type=int, default=2, help="runs of each tree, with --before")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's run
    args = p.parse_args()
    if args.one or args.before is None:
        import uvloop

        request, engine_pass = uvloop.run(measure(args.store.resolve(), args.requests, args.rounds))
        print(json.dumps({"request_us": request, "pass_us": engine_pass}))
        return
    # this file run in each tree's process, the tree's own packages first on the path
    cmd = [sys.executable, __file__, "--one", "--store", str(args.store.resolve())]
    cmd += ["--requests", str(args.requests), "--rounds", str(args.rounds)]
    this = Path(__file__).resolve().parent.parent
    got: dict[str, list[dict[str, float]]] = {"before": [], "this": []}
    for _ in range(args.runs):
        for label, tree in (("before", args.before.resolve()), ("this", this)):
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run(
                cmd, cwd=tree, capture_output=True, text=True, check=True, env=env
            ).stdout
            got[label].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  {label}: {got[label][-1]}", flush=True)
    for label, runs in got.items():
        request = " ".join(f"{r['request_us']:.1f}" for r in runs)
        passes = " ".join(f"{r['pass_us']:.1f}" for r in runs)
        print(f"{label}: a request {request} us, the engine's pass {passes} us")


if __name__ == "__main__":
    main()
