"""A new model version under load: load it, canary 10%, promote it, unload the old one.

    python -m benchmarks.versions                      # memory sessions, 64 connections
    python -m benchmarks.versions --sessions redis --steady 10

The real server (`python -m app`, admin keys on) serves gru version 1 while 64 clients keep
it busy: 40 run sessions (create, 20 session next-words, delete), 16 send stateless
next-words, 8 stream a session continuation of 20 words to its end. After --steady seconds
the admin API loads version 2 (written into the store the way training writes: a temporary
folder renamed), splits new work 90/10, promotes version 2 and unloads version 1 (its grace
period long enough for the sessions on it to end, as clients end them). Every answer must be
2xx and every stream must end with its finish event.

Prints: the requests and errors of each phase, streams started and cut, which version
answered, p50/p99 of the steady phase against the change (from the load to the unload's
end), and the server's RSS before the load, with both versions, and after the unload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from benchmarks.serving import Server, train_store
from launchers import RedisServer

ADMIN = "bench-admin-key-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    versions: Counter[int] = field(default_factory=Counter)
    streams: int = 0
    cut: int = 0


@dataclass
class Load:
    phase: Phase = field(default_factory=Phase)
    stop: bool = False
    samples: list[str] = field(default_factory=list)

    def record(self, r: httpx.Response, started: float, ok: int = 200) -> bool:
        self.phase.latencies.append(time.perf_counter() - started)
        self.phase.requests += 1
        if r.status_code != ok:
            self.phase.errors[str(r.status_code)] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{r.request.url.path} {r.status_code}: {r.text[:200]}")
            return False
        if ok == 200 and r.headers.get("content-type", "").startswith("application/json"):
            version = r.json().get("version")
            if version is not None:
                self.phase.versions[version] += 1
        return True


async def sessions(c: httpx.AsyncClient, load: Load) -> None:
    while not load.stop:
        t = time.perf_counter()
        r = await c.post("/v1/sessions", json={"text": "one , two ,"})
        if not load.record(r, t, 201):
            await asyncio.sleep(0.05)
            continue
        sid = r.json()["session_id"]
        for _ in range(20):
            t = time.perf_counter()
            load.record(await c.post(f"/v1/sessions/{sid}/next-word", json={"text": "three ,"}), t)
        t = time.perf_counter()
        load.record(await c.delete(f"/v1/sessions/{sid}"), t, 204)


async def stateless(c: httpx.AsyncClient, load: Load) -> None:
    while not load.stop:
        t = time.perf_counter()
        load.record(await c.post("/v1/next-word", json={"text": "one , two , three ,"}), t)


async def streams(c: httpx.AsyncClient, load: Load) -> None:
    while not load.stop:
        t = time.perf_counter()
        r = await c.post("/v1/sessions", json={"text": "one ,"})
        if not load.record(r, t, 201):
            await asyncio.sleep(0.05)
            continue
        sid = r.json()["session_id"]
        phase, finished, words = load.phase, False, 0
        phase.streams += 1
        body = {"max_words": 20, "stream": True}
        try:
            async with c.stream("POST", f"/v1/sessions/{sid}/continuation", json=body) as s:
                if s.status_code != 200:
                    phase.errors[f"stream {s.status_code}"] += 1
                async for line in s.aiter_lines():
                    if line.startswith("data: "):
                        event = orjson.loads(line[6:])
                        finished |= "finish_reason" in event
                        words += "word" in event
        except httpx.HTTPError as e:
            phase.errors[f"stream {type(e).__name__}"] += 1
        if not finished or words != 20:
            phase.cut += 1
        t = time.perf_counter()
        load.record(await c.delete(f"/v1/sessions/{sid}"), t, 204)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


async def admin(c: httpx.AsyncClient, method: str, path: str, body: object = None) -> dict:
    r = await c.request(method, path, json=body, headers=AS_ADMIN, timeout=120)
    if r.status_code != 200:
        raise SystemExit(f"{method} {path}: {r.status_code} {r.text}")
    return r.json()


async def run(args: argparse.Namespace, srv: Server, store: Path, staged: Path) -> None:
    base = f"http://127.0.0.1:{srv.port}"
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    load = Load()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
        tasks = [asyncio.create_task(sessions(c, load)) for _ in range(40)]
        tasks += [asyncio.create_task(stateless(c, load)) for _ in range(16)]
        tasks += [asyncio.create_task(streams(c, load)) for _ in range(8)]
        await asyncio.sleep(2)  # warm: not counted
        load.phase = steady = Phase()
        await asyncio.sleep(args.steady)
        rss_one = srv.rss_mib()
        load.phase = change = Phase()
        began = time.perf_counter()
        tmp = store / "gru" / ".tmp-bench"
        shutil.copytree(staged / "gru" / "2", tmp)
        os.rename(tmp, store / "gru" / "2")  # as the store writes: complete or absent
        steps = []
        t = time.perf_counter()
        await admin(c, "POST", "/admin/models/gru/load", {"version": 2})
        steps.append(("load v2", time.perf_counter() - t))
        rss_two = srv.rss_mib()
        await asyncio.sleep(args.pause)
        t = time.perf_counter()
        await admin(c, "PUT", "/admin/models/gru/split", {"shares": {"1": 90, "2": 10}})
        steps.append(("split 90/10", time.perf_counter() - t))
        await asyncio.sleep(args.pause)
        t = time.perf_counter()
        await admin(c, "POST", "/admin/models/gru/promote", {"version": 2, "force": True})
        steps.append(("promote v2", time.perf_counter() - t))
        t = time.perf_counter()
        await admin(c, "POST", "/admin/models/gru/unload", {"version": 1, "grace_seconds": 30})
        steps.append(("unload v1 (call)", time.perf_counter() - t))
        while True:  # drained once v1 is no longer listed
            got = await admin(c, "GET", "/admin/models")
            if [v["version"] for v in got["models"][0]["versions"]] == [2]:
                break
            await asyncio.sleep(0.05)
        steps.append(("v1 drained and gone", time.perf_counter() - t))
        changed = time.perf_counter() - began
        load.phase = after = Phase()
        await asyncio.sleep(2)
        rss_after = srv.rss_mib()
        load.stop = True
        await asyncio.gather(*tasks)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"sessions in {args.sessions}; 64 connections (40 sessions, 16 stateless, 8 streams)"
    )
    print(
        f"{'phase':<22} {'s':>6} {'requests':>9} {'errors':>7} {'streams':>8} {'cut':>4} "
        f"{'p50 ms':>7} {'p99 ms':>7}  versions"
    )
    for name, phase, secs in (
        ("steady (v1)", steady, args.steady),
        ("the change", change, changed),
        ("after (v2)", after, 2.0),
    ):
        print(
            f"{name:<22} {secs:>6.1f} {phase.requests:>9,} {sum(phase.errors.values()):>7} "
            f"{phase.streams:>8} {phase.cut:>4} {pct(phase.latencies, 0.5):>7.2f} "
            f"{pct(phase.latencies, 0.99):>7.2f}  {dict(sorted(phase.versions.items()))}"
        )
    ratio = pct(change.latencies, 0.99) / pct(steady.latencies, 0.99)
    print(f"p99 during the change / steady p99: {ratio:.2f}x (goal <= 2x)")
    for step, secs in steps:
        print(f"  {step:<22} {secs * 1000:>8.0f} ms")
    print(
        f"server RSS: v1 {rss_one:.0f} MiB, v1 + v2 {rss_two:.0f} MiB, v2 after the unload "
        f"{rss_after:.0f} MiB"
    )
    for s in load.samples:
        print("  error:", s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", choices=["memory", "redis"], default="memory")
    p.add_argument("--steady", type=float, default=8.0, help="seconds of load before the change")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between the admin steps")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        staged = Path(tmp) / "staged"
        train_store(staged)  # gru v1
        train_store(staged)  # gru v2: the same recipe, trained again
        store = Path(tmp) / "store"
        shutil.copytree(staged / "gru" / "1", store / "gru" / "1")
        env = {"ADMIN_API_KEYS": ADMIN, "DEFAULT_MODEL": "gru"}
        if args.sessions == "redis":
            redis = stack.enter_context(RedisServer(Path(tmp) / "redis"))
            env |= {"SESSION_BACKEND": "redis", "REDIS_URL": redis.url}
        srv = stack.enter_context(Server(store, **env))
        asyncio.run(run(args, srv, store, staged))


if __name__ == "__main__":
    main()
