"""Soak benchmark: the real server under a mixed, careless load for minutes, per session store.

    python -m benchmarks.soak                          # 300 s on each store
    python -m benchmarks.soak --seconds 120 --store memory

Many concurrent clients (httpx async) each loop over a random mix of: create a session, feed it
(session next-word), continue it, stream a continuation (SSE) to the end, delete it, abandon it
(create and never touch again), and start a stream, read its first event and drop it (that
session is then abandoned too). Sessions idle for half the TTL are abandoned as well, so no
request can meet an expired session: every non-2xx is an error, as is every exception.

Prints per store: requests and errors by action, the server's RSS in the first and last minute,
and sessions live at the end against created/deleted, then again once TTL + a sweep have passed
(SESSION_TTL_SECONDS is short, --ttl, so abandoned sessions are reclaimed within the run).
Needs `redis-server` (Debian package) for --store redis. Trains a `gru` checkpoint into a temp
store unless --model-store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.serving import Server, live_sessions, train_store
from launchers import RedisServer

# action -> weight
MIX = {
    "create": 10,
    "feed": 40,
    "continue": 15,
    "stream": 10,
    "stream-drop": 5,
    "delete": 8,
    "abandon": 4,
}
WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", ",")


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    created: int = 0
    deleted: int = 0

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{what}: {detail[:200]}")


def text() -> str:
    return " ".join(random.choices(WORDS, k=random.randint(1, 6)))


class Client:
    """One client: a few sessions of its own, used one request at a time."""

    def __init__(self, http: httpx.AsyncClient, tally: Tally, ttl: float):
        self.http, self.tally, self.ttl = http, tally, ttl
        self.sessions: dict[str, float] = {}  # id -> last use (monotonic)

    def check(self, action: str, r: httpx.Response, ok: int) -> bool:
        self.tally.requests[action] += 1
        if r.status_code != ok:
            self.tally.error(f"{action} {r.status_code}", r.text)
            return False
        return True

    async def create(self, keep: bool = True) -> None:
        r = await self.http.post("/v1/sessions", json={"text": text()})
        if self.check("create" if keep else "abandon", r, 201):
            self.tally.created += 1
            if keep:
                self.sessions[r.json()["session_id"]] = time.monotonic()

    def pick(self) -> str | None:
        now = time.monotonic()
        for sid, used in list(self.sessions.items()):
            if now - used > self.ttl / 2:  # abandoned: the TTL reclaims it
                del self.sessions[sid]
        if not self.sessions:
            return None
        sid = random.choice(list(self.sessions))
        self.sessions[sid] = now
        return sid

    async def step(self) -> None:
        action = random.choices(list(MIX), weights=list(MIX.values()))[0]
        if action == "create" or (action != "abandon" and len(self.sessions) == 0):
            await self.create()
            return
        if action == "abandon":
            await self.create(keep=False)
            return
        sid = self.pick()
        if sid is None:
            await self.create()
            return
        path = f"/v1/sessions/{sid}"
        if action == "feed":
            r = await self.http.post(f"{path}/next-word", json={"text": text(), "top_k": 5})
            self.check(action, r, 200)
        elif action == "continue":
            body = {"max_words": random.randint(1, 30), "temperature": 0.8}
            self.check(action, await self.http.post(f"{path}/continuation", json=body), 200)
        elif action == "delete":
            if self.check(action, await self.http.delete(path), 204):
                self.tally.deleted += 1
            del self.sessions[sid]
        else:  # stream, stream-drop
            body = {"max_words": random.randint(20, 60), "stream": True}
            drop = action == "stream-drop"
            async with self.http.stream("POST", f"{path}/continuation", json=body) as r:
                self.tally.requests[action] += 1
                if r.status_code != 200:
                    await r.aread()
                    self.tally.error(f"{action} {r.status_code}", r.text)
                    return
                events = 0
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        events += 1
                        if drop:
                            break
                if events == 0:
                    self.tally.error(f"{action} empty", "no SSE event")
            if drop:  # the server cancels the rest; the session is left to the TTL
                del self.sessions[sid]


async def drive(base: str, clients: int, seconds: float, ttl: float, tally: Tally) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        deadline = time.monotonic() + seconds

        async def run(client: Client) -> None:
            while time.monotonic() < deadline:
                try:
                    await client.step()
                except Exception as e:  # every exception is a counted error
                    tally.requests["exception"] += 1
                    tally.error(f"exception {type(e).__name__}", repr(e))

        await asyncio.gather(*(run(Client(http, tally, ttl)) for _ in range(clients)))


async def sample_rss(srv: Server, every: float, out: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while True:
        out.append((time.monotonic() - start, srv.rss_mib()))
        await asyncio.sleep(every)


async def soak_run(
    srv: Server, args: argparse.Namespace, tally: Tally
) -> list[tuple[float, float]]:
    rss: list[tuple[float, float]] = []
    sampler = asyncio.create_task(sample_rss(srv, 2.0, rss))
    try:
        await drive(srv.base, args.clients, args.seconds, args.ttl, tally)
    finally:
        sampler.cancel()
    return rss


def listed_sessions(base: str) -> int:
    """Sessions that GET /v1/sessions lists, all pages."""
    n, cursor = 0, None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base}/v1/sessions", params=params, timeout=30).json()
        n += len(page["sessions"])
        if not (cursor := page["next_cursor"]):
            return n


def soak(store_name: str, model_store: Path, args: argparse.Namespace, tmp: Path) -> bool:
    env = {
        "SESSION_TTL_SECONDS": str(args.ttl),
        "ACCESS_LOG": "false",
        "MAX_SESSIONS": "1000000",
    }
    backend = RedisServer(tmp / f"redis-{store_name}") if store_name == "redis" else None
    with backend or contextlib.nullcontext() as redis:
        if redis:
            env |= {"SESSION_BACKEND": "redis", "REDIS_URL": redis.url}
        with Server(model_store, **env) as srv:
            tally = Tally()
            start = time.monotonic()
            rss = asyncio.run(soak_run(srv, args, tally))
            took = time.monotonic() - start
            live_end = live_sessions(srv.base)
            # every session is idle now: TTL + one sweep (every min(30 s, TTL)) reclaims them all
            wait_until = time.monotonic() + args.ttl + min(30.0, args.ttl) + 10
            live_after = live_end
            while time.monotonic() < wait_until and live_after > 0:
                time.sleep(1)
                live_after = live_sessions(srv.base)
            reclaimed_in = args.ttl + min(30.0, args.ttl) + 10 - (wait_until - time.monotonic())
            rss_idle = srv.rss_mib()
            listed = listed_sessions(srv.base)
    minute = min(60.0, took / 2)
    first = [m for t, m in rss if t < minute]
    last = [m for t, m in rss if t >= rss[-1][0] - minute]
    first_mean, last_mean = sum(first) / len(first), sum(last) / len(last)
    total, errors = sum(tally.requests.values()), sum(tally.errors.values())
    print(f"\n{store_name} store: {args.clients} clients, {took:.0f} s, TTL {args.ttl:g} s")
    print(f"  requests: {total:,} ({total / took:.0f}/s); errors: {errors}")
    print("  by action: " + ", ".join(f"{a} {n:,}" for a, n in sorted(tally.requests.items())))
    for what, n in sorted(tally.errors.items()):
        print(f"  error {what}: {n}")
    for s in tally.samples:
        print(f"    e.g. {s}")
    print(
        f"  RSS (MiB, sampled every 2 s): first {minute:.0f} s mean {first_mean:.1f} "
        f"(max {max(first):.1f}), last {minute:.0f} s mean {last_mean:.1f} (max {max(last):.1f}):"
        f" {100 * (last_mean / first_mean - 1):+.1f}%; {rss_idle:.1f} after the sessions expired"
    )
    print(
        f"  sessions: created {tally.created:,}, deleted {tally.deleted:,}, live at the end "
        f"{live_end:,}; live {live_after:,} {reclaimed_in:.0f} s later (TTL + sweep), "
        f"GET /v1/sessions then lists {listed:,}"
    )
    flat = abs(last_mean / first_mean - 1) <= 0.05
    ok = errors == 0 and flat and live_after == 0 and listed == 0
    print(f"  goal (0 errors, RSS flat within 5%, all reclaimed): {'met' if ok else 'NOT met'}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=300, help="load per store")
    p.add_argument("--store", choices=("memory", "redis", "both"), default="both")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients")
    p.add_argument("--ttl", type=float, default=20, help="SESSION_TTL_SECONDS of the server")
    p.add_argument(
        "--model-store", type=Path, help="model store (default: train gru into a temp one)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    random.seed(args.seed)
    stores = ("memory", "redis") if args.store == "both" else (args.store,)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_store = args.model_store or train_store(tmp / "store")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"device {os.environ.get('DEVICE', 'auto')}; python {platform.python_version()}"
        )
        results = [soak(name, model_store, args, tmp) for name in stores]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
