"""Our server against bare ones, on one machine, driven in turn (issue 19):

    python -m benchmarks.servers                      # trains gru-copy into a temp store
    python -m benchmarks.servers --store DIR --duration 6 --rounds 3

All up at once, each load run on each server in turn, `--rounds` times, so a load from
elsewhere on the machine falls on all alike; medians over the rounds, each round's ratio.
- GET /health at 64 connections: our app as deployed (`python -m app`: API keys on, access log
  and metrics on) against a bare ASGI app that answers 15 bytes, on uvicorn with httptools and
  uvloop: ours as a % of bare (issue 19's target: at least 40%).
- Our server with SERVER=granian (`python -m app --server granian`: the same app on granian's
  embedded server, app/api/granian_server.py) beside it on uvicorn (the default): /health and
  session next-word at 64 connections, and session next-word from one client (its p50 is a
  request's latency).
Also each server's CPU milliseconds per request (its processes, children too).
Needs `wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.serving import Server, create_sessions, lua_sessions, train_store, wrk
from launchers import HOST

BENCH_KEY = "bench-key-0123456789abcdef"
DEPLOYED = {  # as a deployment runs: keys on, access log on (info level), metrics (always on)
    "API_KEYS": BENCH_KEY,
    "MAX_SESSIONS_PER_KEY": "100000",
    "ACCESS_LOG": "true",
    "LOG_LEVEL": "info",
}
NO_LOG = "ours /health (uvicorn, no access log)"
ONE_UV = "ours next-word, 1 client (uvicorn)"
ONE_GR = "ours next-word, 1 client (granian)"
BODY = b'{"status":"ok"}'  # 15 bytes, as our /health's


async def bare(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    """The bare ASGI app: 15 bytes of JSON to any request."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its live descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
    return total


class BareUvicorn(Server):
    def command(self) -> list[str]:
        where = ["--host", HOST, "--port", str(self.port)]
        flags = ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        return [sys.executable, "-m", "uvicorn", "benchmarks.servers:bare", *where, *flags]


@dataclass
class Case:
    """One load on one server: `label` names it in the tables."""

    label: str
    url: str
    conns: int
    script: Path | None = None
    cpu: Callable[[], float] | None = None


def in_turn(cases: list[Case], rounds: int, duration: float) -> dict[str, list[dict[str, float]]]:
    """Each case's wrk run, one after another, `rounds` times; per run also `cpu_ms`, the
    server's CPU milliseconds per request."""
    for c in cases:  # warm-up
        wrk(c.url, min(c.conns, 16), 1, c.script)
    runs: dict[str, list[dict[str, float]]] = {c.label: [] for c in cases}
    for i in range(rounds):
        for c in cases:
            before = c.cpu() if c.cpu else 0.0
            r = wrk(c.url, c.conns, duration, c.script)
            if c.cpu:
                r["cpu_ms"] = (c.cpu() - before) * 1000 / max(1, r["requests"])
            runs[c.label].append(r)
        line = ", ".join(f"{label} {rs[-1]['rps']:.0f}" for label, rs in runs.items())
        print(f"  round {i + 1} (load {os.getloadavg()[0]:.2f}): {line} req/s", flush=True)
    return runs


def summary(
    rs: list[dict[str, float]], ref: list[dict[str, float]] | None = None
) -> dict[str, Any]:
    """Medians over rounds of rps, p50, p99 (and cpu_ms); with `ref`, each round's rps ratio
    to it and their median."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
    if all("cpu_ms" in r for r in rs):
        out["cpu_ms"] = statistics.median(r["cpu_ms"] for r in rs)
    out["errors"] = sum(r["errors"] for r in rs)
    if ref is not None:
        out["ratios"] = [a["rps"] / b["rps"] for a, b in zip(rs, ref, strict=True)]
        out["ratio"] = statistics.median(out["ratios"])
    return out


def row(label: str, s: dict[str, Any], ref_label: str | None = None, percent: bool = False) -> str:
    """One table line of `summary`'s figures."""
    line = f"  {label:<38} {s['rps']:>8.0f} req/s  p50 {s['p50']:>6.2f} ms  p99 {s['p99']:>6.2f} ms"
    if "cpu_ms" in s:
        line += f"  {s['cpu_ms']:.3f} CPU-ms/req"
    if ref_label is not None:
        rounds = " ".join(f"{r:.2f}" for r in s["ratios"])
        ratio = f"{s['ratio'] * 100:.0f}%" if percent else f"{s['ratio']:.2f}x"
        line += f"  {ratio} of {ref_label} (rounds: {rounds})"
    return line + (f"  ({s['errors']} non-2xx)" if s["errors"] else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--store", type=Path, help="model store (default: train gru-copy into a temp one)"
    )
    p.add_argument("--duration", type=float, default=6, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sessions", type=int, default=100, help="live sessions for next-word")
    p.add_argument(
        "--access-log-off-too",
        action="store_true",
        help="also our /health on uvicorn with ACCESS_LOG=false (what the log costs)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or train_store(tmp / "store", ["gru-copy"])
        print(f"machine: {os.uname().machine}, {os.cpu_count()} cores, load {os.getloadavg()}")
        with contextlib.ExitStack() as stack:
            ours = stack.enter_context(Server(store, **DEPLOYED))
            gran = stack.enter_context(Server(store, SERVER="granian", **DEPLOYED))
            bare_srv = stack.enter_context(BareUvicorn(store))
            scripts = {}
            for name, srv in (("uvicorn", ours), ("granian", gran)):
                ids = asyncio.run(create_sessions(srv.base, args.sessions, BENCH_KEY))
                scripts[name] = lua_sessions(ids, tmp / name, BENCH_KEY)
            cases = [
                Case("bare ASGI /health", f"{bare_srv.base}/health", 64, None, bare_srv.cpu_s),
                Case("ours /health (uvicorn)", f"{ours.base}/health", 64, None, ours.cpu_s),
                Case("ours /health (granian)", f"{gran.base}/health", 64, None, gran.cpu_s),
                Case("ours next-word (uvicorn)", ours.base, 64, scripts["uvicorn"], ours.cpu_s),
                Case("ours next-word (granian)", gran.base, 64, scripts["granian"], gran.cpu_s),
                Case(ONE_UV, ours.base, 1, scripts["uvicorn"], ours.cpu_s),
                Case(ONE_GR, gran.base, 1, scripts["granian"], gran.cpu_s),
            ]
            if args.access_log_off_too:
                quiet = stack.enter_context(Server(store, **(DEPLOYED | {"ACCESS_LOG": "false"})))
                cases.insert(2, Case(NO_LOG, f"{quiet.base}/health", 64, None, quiet.cpu_s))
            runs = in_turn(cases, args.rounds, args.duration)
        print(
            f"\n64 connections, wrk -t1, {args.rounds} rounds of {args.duration:g} s, in turn, "
            f"medians (load {os.getloadavg()}):"
        )
        bare_runs = runs["bare ASGI /health"]
        print(row("bare ASGI /health (uvicorn)", summary(bare_runs)))
        for label in ("ours /health (uvicorn)", NO_LOG, "ours /health (granian)"):
            if label not in runs:
                continue
            print(row(label, summary(runs[label], bare_runs), "bare", percent=True))
        uv = runs["ours next-word (uvicorn)"]
        print(row("ours next-word (uvicorn)", summary(uv)))
        print(
            row(
                "ours next-word (granian)", summary(runs["ours next-word (granian)"], uv), "uvicorn"
            )
        )
        print("\n1 connection, session next-word (p50: the latency of a request):")
        print(row(ONE_UV, summary(runs[ONE_UV])))
        print(row(ONE_GR, summary(runs[ONE_GR], runs[ONE_UV]), "uvicorn"))


if __name__ == "__main__":
    main()
