"""Abuse benchmark: a normal client at a steady rate while, in turn, each abuse of issue 17 runs.

    python -m benchmarks.abuse --store DIR             # a store with a `gru` checkpoint
    python -m benchmarks.abuse --store DIR --seconds 5 --rate 50 --scale 1
    python -m benchmarks.abuse --store DIR --scale 1 --token-limit 20000   # with a rate limit

The normal client feeds its own sessions (`POST /v1/sessions/{id}/next-word`) at `--rate`
requests a second, open loop (a request starts on time whether or not the last one answered),
through httpx. Phases of `--seconds` each: the client alone, then alone with each abuse in turn:

  completions-bomb   row 1: one prompt list x best_of 128, max_tokens 1
  echo-bomb          row 2: long prompts x n, echo, logprobs 30, max_tokens 0
  queue-flood        row 5: prompts x n x max_tokens that fill the engine's queue
  logit-bias         rows 8 and 10: a 500 KB key, keys of one token summed, a 5,000-digit key
  stale-lease        row 7: sessions whose Redis lease a "crashed replica" left behind
                     (Redis only: skipped without redis-server)

Sizes are the issue's divided by `--scale` (default 25, so a 2-core laptop survives the server
before the admission limits; 1 is the issue's own). Prints, per phase: the normal client's
requests, p50 and p99 latency, errors (any non-200 or exception), the abuse's answers by
status, and the server's RSS at the phase's start and end. No figure of it is in the docs yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.serving import Server
from launchers import RedisServer

SESSIONS = 20  # the normal client's
Abuse = Callable[[httpx.AsyncClient], Awaitable[int]]
# With --token-limit the server has API keys: the normal client and the abusers hold one each
# (without it keys are off and these headers are ignored).
NORMAL_KEY, ABUSER_KEY = "normal-client-key-0001", "abusive-client-key-0002"
NORMAL = {"Authorization": f"Bearer {NORMAL_KEY}"}
ABUSER = {"Authorization": f"Bearer {ABUSER_KEY}"}


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    abuse: Counter[int] = field(default_factory=Counter)
    rss: tuple[float, float] = (0.0, 0.0)

    def p(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def normal_client(
    http: httpx.AsyncClient, ids: list[str], rate: float, seconds: float, phase: Phase
) -> None:
    """Open loop: request i starts at i / rate, whatever the answers before it."""

    async def one(sid: str) -> None:
        started = time.perf_counter()
        try:
            r = await http.post(f"/v1/sessions/{sid}/next-word", json={"text": "one ,"})
            if r.status_code != 200:
                phase.errors[str(r.status_code)] += 1
        except httpx.HTTPError as e:
            phase.errors[type(e).__name__] += 1
        phase.latencies.append(time.perf_counter() - started)

    tasks, start, i = [], time.perf_counter(), 0
    while (due := start + i / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(ids[i % len(ids)])))
        i += 1
    await asyncio.gather(*tasks)


async def abuser(http: httpx.AsyncClient, abuse: Abuse, until: float, phase: Phase) -> None:
    while time.perf_counter() < until:
        try:
            phase.abuse[await abuse(http)] += 1
        except httpx.HTTPError:
            phase.abuse[0] += 1  # no answer (a timeout, a closed connection)


def abuses(scale: int, redis_url: str | None) -> dict[str, Abuse]:
    def post(body: object) -> Abuse:
        async def run(http: httpx.AsyncClient) -> int:
            return (await http.post("/v1/completions", json=body, timeout=120)).status_code

        return run

    bombs: dict[str, Abuse] = {
        "completions-bomb": post(
            {"prompt": [[12]] * (50_000 // scale), "best_of": 128, "max_tokens": 1}
        ),
        "echo-bomb": post(
            {
                "prompt": ["one " * (2500 // scale)] * 3,
                "n": 128,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 30,
            }
        ),
        "queue-flood": post(
            {"prompt": ["one ,"] * 32, "n": 128, "max_tokens": max(1, 200 // scale)}
        ),
    }
    biases = [
        {"x" * 500_000: 1},
        {"one": 100, "One": 100, "ONE": 100, " one": 100, "one ": 100, "12": 100, "012": 100},
        {"9" * 5000: 1, "²": 1},
    ]
    turn = 0

    async def logit_bias(http: httpx.AsyncClient) -> int:
        nonlocal turn
        turn += 1
        body = {"prompt": "one ,", "max_tokens": 2, "logit_bias": biases[turn % len(biases)]}
        return (await http.post("/v1/completions", json=body, timeout=60)).status_code

    bombs["logit-bias"] = logit_bias
    if redis_url is not None:
        bombs["stale-lease"] = stale_lease(redis_url)
    return bombs


def stale_lease(redis_url: str) -> Abuse:
    """Sessions of the abuser's own whose lease a crashed replica left: requests to them."""
    import redis  # the Redis phase only

    r = redis.Redis.from_url(redis_url)
    ids: list[str] = []

    async def run(http: httpx.AsyncClient) -> int:
        if not ids:
            for _ in range(10):
                ids.append((await http.post("/v1/sessions", json={})).json()["session_id"])
        sid = ids[len(ids) - 1]
        ids.insert(0, ids.pop())
        r.set(f"hn:lock:{sid}", "a-crashed-holder", px=5000, nx=True)
        got = await http.post(f"/v1/sessions/{sid}/next-word", json={"text": "two"}, timeout=60)
        return got.status_code

    return run


async def run_phase(
    server: Server, ids: list[str], abuse: Abuse | None, args: argparse.Namespace, name: str
) -> Phase:
    phase = Phase(name)
    before = server.rss_mib()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=server.base, timeout=30, limits=limits, headers=NORMAL) as http,
        httpx.AsyncClient(base_url=server.base, timeout=120, headers=ABUSER) as bad,
    ):
        until = time.perf_counter() + args.seconds
        abusers = []
        if abuse is not None:
            for _ in range(args.abusers):
                abusers.append(asyncio.ensure_future(abuser(bad, abuse, until, phase)))
        await normal_client(http, ids, args.rate, args.seconds, phase)
        for task in abusers:  # an abuse request still running is abandoned
            task.cancel()
        for task in abusers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await settle(server)
    phase.rss = (before, server.rss_mib())
    return phase


async def settle(server: Server, seconds: float = 60) -> None:
    """Wait until the server answers a plain request quickly again (the abuse's work done)."""
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=server.base, timeout=5, headers=NORMAL) as http:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                r = await http.post("/v1/next-word", json={"text": "one"})
                if r.status_code == 200 and time.perf_counter() - started < 0.1:
                    return
            await asyncio.sleep(0.2)


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(
        f"# abuse: normal client {args.rate:g} req/s of session next-word, {args.seconds:g} s "
        f"a phase, sizes / {args.scale}, {args.abusers} abuser(s); "
        f"python {platform.python_version()}"
    )
    alone = phases[0].p(0.99)
    print(
        f"{'phase':<18} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'x alone':>8} "
        f"{'errors':<16} {'abuse answers':<24} {'RSS MiB start -> end':>22}"
    )
    for ph in phases:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(ph.errors.items())) or "0"
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(ph.abuse.items())) or "-"
        print(
            f"{ph.name:<18} {len(ph.latencies):>8} {ph.p(0.5):>8.1f} {ph.p(0.99):>8.1f} "
            f"{ph.p(0.99) / alone:>8.2f} {errors:<16} {answers:<24} "
            f"{ph.rss[0]:>10.0f} -> {ph.rss[1]:<8.0f}"
        )


async def session_ids(server: Server) -> list[str]:
    async with httpx.AsyncClient(base_url=server.base, timeout=30, headers=NORMAL) as http:
        got = [await http.post("/v1/sessions", json={"text": "one ,"}) for _ in range(SESSIONS)]
    return [r.json()["session_id"] for r in got]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="a model store with `gru`")
    ap.add_argument("--rate", type=float, default=50.0, help="normal requests a second")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--scale", type=int, default=25, help="the issue's sizes divided by this")
    ap.add_argument("--abusers", type=int, default=2, help="concurrent abuse loops")
    ap.add_argument("--only", nargs="*", help="run only these abuses")
    ap.add_argument(
        "--token-limit",
        type=float,
        default=None,
        help="API keys on (one for the normal client, one for the abusers) and "
        "RATE_LIMIT_TOKENS_PER_SECOND at this figure",
    )
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        env = {"ACCESS_LOG": "false", "DEFAULT_MODEL": "gru", "DEVICE": "cpu"}
        if args.token_limit is not None:
            keys = f"{NORMAL_KEY},{ABUSER_KEY}"
            env |= {"API_KEYS": keys, "RATE_LIMIT_TOKENS_PER_SECOND": str(args.token_limit)}
        url = None
        if shutil.which("redis-server"):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(RedisServer(tmp / "redis")).url
            env |= {"SESSION_BACKEND": "redis", "REDIS_URL": url}
        else:
            print("no redis-server: sessions in memory, the stale-lease phase skipped")
        server = stack.enter_context(Server(args.store, **env))
        ids = asyncio.run(session_ids(server))
        phases = [asyncio.run(run_phase(server, ids, None, args, "alone"))]
        for name, abuse in abuses(args.scale, url).items():
            if args.only and name not in args.only:
                continue
            print(f"... {name}", file=sys.stderr)
            phases.append(asyncio.run(run_phase(server, ids, abuse, args, name)))
        phases.append(asyncio.run(run_phase(server, ids, None, args, "alone again")))
    report(phases, args)


if __name__ == "__main__":
    main()
