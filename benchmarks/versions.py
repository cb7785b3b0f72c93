"""A new model version under load: load it, canary 10%, promote it, unload the old one.

    python -m benchmarks.versions                      # memory sessions, 64 connections
    python -m benchmarks.versions --sessions redis

The real server (`python -m app`, admin keys on) serves gru version 1 while 64 connections
keep it busy: wrk (C, -t1) on 56 of them, three requests in four a session next-word on one
of --sessions-n sessions made on version 1, one in four a stateless next-word; and 8 Python
clients that each create a session, stream a continuation of 20 words to its finish event
and delete it, again and again. wrk runs --steady seconds, then --change seconds during
which the admin API loads version 2 (written into the store the way training writes: a
temporary folder renamed), splits new work 90/10, promotes version 2 and unloads version 1,
whose sessions stay on it and are served while it drains. Then the clients end those
sessions, version 1 goes, and 200 stateless next-words check who answers.

Prints: wrk's req/s, non-2xx count, p50 and p99 of the steady run against the change's;
streams finished and cut and errors in each; each admin step's time and the drain's; the
server's RSS with version 1, with both, and after the unload (gru is 24k parameters: the
versions' memory is small beside the process's).
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

from benchmarks.serving import Server, train_store, wrk
from launchers import RedisServer

ADMIN = "bench-admin-key-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Phase:
    """The streaming clients' tally in one phase."""

    errors: Counter[str] = field(default_factory=Counter)
    streams: int = 0
    cut: int = 0


@dataclass
class Load:
    phase: Phase = field(default_factory=Phase)
    stop: bool = False
    samples: list[str] = field(default_factory=list)

    def record(self, r: httpx.Response, ok: int) -> bool:
        """Count a non-`ok` answer as an error (the first ten kept as samples)."""
        if r.status_code == ok:
            return True
        self.phase.errors[str(r.status_code)] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{r.request.url.path} {r.status_code}: {r.text[:200]}")
        return False


async def streams(c: httpx.AsyncClient, load: Load) -> None:
    while not load.stop:
        r = await c.post("/v1/sessions", json={"text": "one ,"})
        if not load.record(r, 201):
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
        load.record(await c.delete(f"/v1/sessions/{sid}"), 204)


async def admin(c: httpx.AsyncClient, method: str, path: str, body: object = None) -> dict:
    r = await c.request(method, path, json=body, headers=AS_ADMIN, timeout=120)
    if r.status_code != 200:
        raise SystemExit(f"{method} {path}: {r.status_code} {r.text}")
    return r.json()


MIX_LUA = """
local ids = {%s}
local i = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i + 1
  if i %% 4 == 0 then
    return wrk.format("POST", "/v1/next-word", headers, '{"text": "one , two , three ,"}')
  end
  local id = ids[(i %% #ids) + 1]
  return wrk.format("POST", "/v1/sessions/" .. id .. "/next-word", headers, '{"text": "one"}')
end
"""


async def wrk_run(base: str, conns: int, seconds: float, script: Path) -> dict[str, float]:
    return await asyncio.to_thread(wrk, base + "/", conns, seconds, script)


async def run(args: argparse.Namespace, srv: Server, store: Path, staged: Path, tmp: Path) -> None:
    base = f"http://127.0.0.1:{srv.port}"
    load = Load()
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        ids = []
        for _ in range(args.sessions_n):
            r = await c.post("/v1/sessions", json={"text": "one , two ,"})
            ids.append(r.json()["session_id"])
        script = tmp / "mix.lua"
        script.write_text(MIX_LUA % ",".join(f'"{i}"' for i in ids))
        streamers = [asyncio.create_task(streams(c, load)) for _ in range(args.streams)]
        conns = 64 - args.streams
        await wrk_run(base, conns, 2, script)  # warm: not counted
        load.phase = steady_streams = Phase()
        steady = await wrk_run(base, conns, args.steady, script)
        rss_one = srv.rss_mib()
        load.phase = change_streams = Phase()
        tmp_v = store / "gru" / ".tmp-bench"
        shutil.copytree(staged / "gru" / "2", tmp_v)
        os.rename(tmp_v, store / "gru" / "2")  # as the store writes: complete or absent
        change_run = asyncio.create_task(wrk_run(base, conns, args.change, script))
        steps = []
        await asyncio.sleep(1)
        for step, method, path, body in (
            ("load v2", "POST", "/admin/models/gru/load", {"version": 2}),
            ("split 90/10", "PUT", "/admin/models/gru/split", {"shares": {"1": 90, "2": 10}}),
            ("promote v2", "POST", "/admin/models/gru/promote", {"version": 2, "force": True}),
            (
                "unload v1 (call)",
                "POST",
                "/admin/models/gru/unload",
                {"version": 1, "grace_seconds": 60},
            ),
        ):
            t = time.perf_counter()
            await admin(c, method, path, body)
            steps.append((step, time.perf_counter() - t))
            await asyncio.sleep(args.pause)
        rss_two = srv.rss_mib()
        change = await change_run
        # the clients end their v1 sessions (as sessions end): v1 drains, then goes
        t = time.perf_counter()
        for sid in ids:
            await c.delete(f"/v1/sessions/{sid}")
        while True:
            got = await admin(c, "GET", "/admin/models")
            if [v["version"] for v in got["models"][0]["versions"]] == [2]:
                break
            await asyncio.sleep(0.05)
        steps.append(("v1 sessions ended, v1 gone", time.perf_counter() - t))
        load.phase = after_streams = Phase()
        await asyncio.sleep(2)
        rss_after = srv.rss_mib()
        load.stop = True
        await asyncio.gather(*streamers)
        versions = Counter()
        for _ in range(200):
            r = await c.post("/v1/next-word", json={"text": "one ,"})
            versions[r.headers["x-model-version"]] += 1
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; sessions in "
        f"{args.sessions}; wrk -t1 -c{conns} (3 of 4 requests session next-word on "
        f"{args.sessions_n} sessions, 1 stateless) + {args.streams} clients streaming 20 words"
    )
    print(
        f"{'phase':<12} {'s':>5} {'req/s':>8} {'non-2xx':>8} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'streams':>7} {'cut':>4} {'errors':>6}"
    )
    for name, w, ph, secs in (
        ("steady (v1)", steady, steady_streams, args.steady),
        ("the change", change, change_streams, args.change),
    ):
        print(
            f"{name:<12} {secs:>5.0f} {w['rps']:>8,.0f} {w['errors']:>8} {w['p50']:>7.2f} "
            f"{w['p99']:>7.2f} | {ph.streams:>7} {ph.cut:>4} {sum(ph.errors.values()):>6}"
        )
    print(
        f"after (v2): streams {after_streams.streams}, cut {after_streams.cut}, errors "
        f"{sum(after_streams.errors.values())}; 200 next-words answered by {dict(versions)}"
    )
    print(f"p99 during the change / steady p99: {change['p99'] / steady['p99']:.2f}x (goal <= 2x)")
    for step, secs in steps:
        print(f"  {step:<28} {secs * 1000:>8.0f} ms")
    print(
        f"server RSS: v1 {rss_one:.0f} MiB, v1 + v2 {rss_two:.0f} MiB, v2 after the unload "
        f"{rss_after:.0f} MiB"
    )
    for s in load.samples:
        print("  error:", s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", choices=["memory", "redis"], default="memory")
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady load (wrk)")
    p.add_argument("--change", type=float, default=10.0, help="seconds of the change's wrk run")
    p.add_argument("--pause", type=float, default=1.5, help="seconds between the admin steps")
    p.add_argument("--sessions-n", type=int, default=200, help="sessions wrk feeds")
    p.add_argument("--streams", type=int, default=8, help="clients streaming at once")
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
        asyncio.run(run(args, srv, store, staged, Path(tmp)))


if __name__ == "__main__":
    main()
