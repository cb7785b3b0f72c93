"""What one replica and one Redis carry, measured, and what a large fleet needs, from those
figures on paper (docs/scaling.md).

    python -m benchmarks.scaling                  # the default model gru-copy, trained here
    python -m benchmarks.scaling --store store    # a store already trained (its default model)

Measures, on the real server (`python -m app`) with the default model:
- Redis's work for each kind of session request (create, next-word, a continuation of 10
  words, info, delete), N of a kind one at a time: bytes in and out from its counters (INFO
  stats, reset before), and under MONITOR the commands the server sent (round trips: a script
  call is one) and those the scripts ran;
- Redis memory per live session (used_memory over 10,000 sessions, and one record's MEMORY
  USAGE), and the server's RSS per session with the memory store;
- session next-word at 64 connections (wrk) on one replica, memory and Redis stores, two
  fresh servers driven in turn for --rounds rounds (the median round of each): requests per
  second, the server's CPU seconds a request, and Redis's (used_cpu_user + sys);
then prints the fleet for --sessions-target live sessions at --rps-target requests/s.
Needs `wrk` and `redis-server`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.serving import Server, create_sessions, lua_sessions, train_store, wrk
from launchers import AppProcess, RedisServer

KINDS = ("create", "next-word", "continuation", "info", "delete")
STOP = "scaling-benchmark-stop"


def redis_counters(r: redis.Redis) -> dict[str, Any]:
    stats = r.info("stats")
    cpu = r.info("cpu")
    return {
        "in": stats["total_net_input_bytes"],
        "out": stats["total_net_output_bytes"],
        "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
    }


def watch(r: redis.Redis, seen: list[tuple[str, str]], ready: threading.Event) -> None:
    """Redis's MONITOR until the ECHO of STOP: (who, command) of each, `lua` for the
    commands a script ran, the client's address for the ones sent."""
    with r.monitor() as m:
        ready.set()
        for cmd in m.listen():
            if cmd["command"] == f"ECHO {STOP}":
                return
            who = "lua" if cmd.get("client_type") == "lua" else "client"
            seen.append((who, cmd["command"].split(" ", 1)[0].lower()))


def make_sessions(c: httpx.Client, kind: str, n: int) -> list[str]:
    """The sessions `n` requests of one kind work on (none to create)."""
    if kind == "create":
        return []
    return [c.post("/v1/sessions", json={"text": "one ,"}).json()["session_id"] for _ in range(n)]


def run_kind(c: httpx.Client, kind: str, ids: list[str], n: int) -> None:
    """`n` session requests of one kind, one at a time, each on a session of its own."""
    for i in range(n):
        if kind == "create":
            c.post("/v1/sessions", json={"text": "one ,"}).raise_for_status()
        elif kind == "next-word":
            c.post(f"/v1/sessions/{ids[i]}/next-word", json={"text": "two ,"}).raise_for_status()
        elif kind == "continuation":
            c.post(f"/v1/sessions/{ids[i]}/continuation", json={"max_words": 10}).raise_for_status()
        elif kind == "info":
            c.get(f"/v1/sessions/{ids[i]}").raise_for_status()
        else:
            c.delete(f"/v1/sessions/{ids[i]}").raise_for_status()


def per_request(r: redis.Redis, base: str, kind: str, n: int) -> dict[str, Any]:
    """Redis's work for `n` session requests of one kind, a request: bytes in and out (from its
    counters), then, in a second pass under MONITOR, the commands the server sent (round trips;
    a script call is one) and those its scripts ran."""
    with httpx.Client(base_url=base, timeout=30) as c:
        ids = make_sessions(c, kind, n)
        r.config_resetstat()
        before = redis_counters(r)
        run_kind(c, kind, ids, n)
        after = redis_counters(r)
        ids = make_sessions(c, kind, n)
        seen: list[tuple[str, str]] = []
        ready = threading.Event()
        watcher = threading.Thread(target=watch, args=(r, seen, ready))
        watcher.start()
        ready.wait(10)
        run_kind(c, kind, ids, n)
        r.echo(STOP)
        watcher.join(30)
    sent = Counter(cmd for who, cmd in seen if who == "client")
    scripted = Counter(cmd for who, cmd in seen if who == "lua")
    return {
        "sent": {name: k / n for name, k in sent.items()},
        "scripted": {name: k / n for name, k in scripted.items()},
        "round_trips": sum(sent.values()) / n,
        "ops": (sum(sent.values()) + sum(scripted.values())) / n,
        "in": (after["in"] - before["in"]) / n,
        "out": (after["out"] - before["out"]) / n,
    }


def session_memory(r: redis.Redis, base: str, n: int) -> dict[str, float]:
    used0 = r.info("memory")["used_memory"]
    ids = asyncio.run(create_sessions(base, n))
    used1 = r.info("memory")["used_memory"]
    prefix = "hn"
    usage = r.memory_usage(f"{prefix}:s:{ids[0]}", samples=0) or 0
    return {"per_session": (used1 - used0) / n, "record": float(usage)}


def prepare(srv: AppProcess, tmp: Path, n: int) -> Path:
    """`n` sessions on `srv` and the wrk script that drives them (warmed up)."""
    script = lua_sessions(asyncio.run(create_sessions(srv.base, n)), tmp)
    wrk(srv.base, 16, 1, script)
    return script


def throughput(
    srv: AppProcess, script: Path, r: redis.Redis | None, seconds: float
) -> dict[str, float]:
    """wrk at 64 connections: its figures, and the server's and Redis's CPU a request."""
    cpu0 = srv.cpu_s()
    rcpu0 = redis_counters(r)["cpu"] if r else 0.0
    got = wrk(srv.base, 64, seconds, script)
    cpu = srv.cpu_s() - cpu0
    rcpu = (redis_counters(r)["cpu"] - rcpu0) if r else 0.0
    n = got["requests"]
    return {**got, "cpu_us": cpu / n * 1e6, "redis_cpu_us": rcpu / n * 1e6}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median throughput."""
    return sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, help="a trained store (default: train gru-copy)")
    p.add_argument("--requests", type=int, default=500, help="requests of each kind")
    p.add_argument("--sessions", type=int, default=10_000, help="sessions for memory")
    p.add_argument("--duration", type=float, default=10, help="wrk seconds a run")
    p.add_argument("--rounds", type=int, default=3, help="throughput runs of each store")
    p.add_argument("--sessions-target", type=int, default=1_000_000)
    p.add_argument("--rps-target", type=int, default=50_000)
    args = p.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or '?'}")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        store = args.store or train_store(tmp / "store", ("gru-copy",))
        env = {"ACCESS_LOG": "false"}  # as the other serving figures; the log costs CPU
        with RedisServer(tmp / "redis") as rs:
            r = redis.Redis.from_url(rs.url)
            redis_env = {**env, "SESSION_BACKEND": "redis", "REDIS_URL": rs.url}
            with Server(store, **redis_env) as srv:
                print(f"model: {default_model(srv.base)} (the server's default)")
                ops = {k: per_request(r, srv.base, k, args.requests) for k in KINDS}
                r.flushdb()
                mem = session_memory(r, srv.base, args.sessions)
            r.flushdb()
            with Server(store, **env) as srv:
                rss0 = srv.rss_mib()
                asyncio.run(create_sessions(srv.base, args.sessions))
                rss_per = (srv.rss_mib() - rss0) * 2**20 / args.sessions
            # throughput: two fresh servers up at once, driven in turn, --rounds times, so a
            # load from elsewhere on the machine falls on both alike; the median round of each
            with Server(store, **env) as mem_srv, Server(store, **redis_env) as redis_srv:
                scripts = (prepare(mem_srv, tmp / "m", 1000), prepare(redis_srv, tmp / "r", 1000))
                memory_runs, redis_runs = [], []
                for i in range(args.rounds):
                    memory_runs.append(throughput(mem_srv, scripts[0], None, args.duration))
                    redis_runs.append(throughput(redis_srv, scripts[1], r, args.duration))
                    print(
                        f"  round {i + 1}: memory {memory_runs[-1]['rps']:.0f}, "
                        f"Redis {redis_runs[-1]['rps']:.0f} req/s",
                        flush=True,
                    )
            memory_run, redis_run = median_run(memory_runs), median_run(redis_runs)
    report(args, ops, mem, rss_per, memory_run, redis_run)


def default_model(base: str) -> str:
    return str(httpx.get(f"{base}/v1/models").json()["default"])


def report(
    args: argparse.Namespace,
    ops: dict[str, dict[str, Any]],
    mem: dict[str, float],
    rss_per: float,
    memory_run: dict[str, float],
    redis_run: dict[str, float],
) -> None:
    print(f"\nRedis work a request ({args.requests} of each kind, one at a time; MONITOR):")
    print(
        f"  {'request':<13} {'trips':>5} {'cmds':>5} {'bytes in':>9} {'bytes out':>9}  "
        "sent; run by scripts"
    )
    for kind, o in ops.items():
        sent = ", ".join(f"{name} {n:g}" for name, n in sorted(o["sent"].items()))
        ran = ", ".join(f"{name} {n:g}" for name, n in sorted(o["scripted"].items()))
        print(
            f"  {kind:<13} {o['round_trips']:>5.2f} {o['ops']:>5.1f} {o['in']:>9.0f} "
            f"{o['out']:>9.0f}  {sent}; {ran or '-'}"
        )
    print(
        f"\nmemory a live session: Redis {mem['per_session']:.0f} B (used_memory over "
        f"{args.sessions:,}; the record alone {mem['record']:.0f} B), memory store "
        f"{rss_per:.0f} B of RSS"
    )
    print(
        f"\nsession next-word, 64 connections, one replica, 1,000 sessions (wrk on the same "
        f"machine; the median of {args.rounds} rounds):"
    )
    for label, run in (("memory store", memory_run), ("Redis store", redis_run)):
        print(
            f"  {label:<13} {run['rps']:>7.0f} req/s  p99 {run['p99']:.2f} ms  server CPU "
            f"{run['cpu_us']:.0f} us a request"
            + (f"  Redis CPU {run['redis_cpu_us']:.1f} us a request" if run["redis_cpu_us"] else "")
            + (f"  ({run['errors']:.0f} non-2xx)" if run["errors"] else "")
        )
    # the fleet, on paper
    nw = ops["next-word"]
    rps, live = args.rps_target, args.sessions_target
    per_core = 1e6 / redis_run["cpu_us"]  # a replica's event loop is one core
    replicas = math.ceil(rps / (per_core * 0.7))  # at 70% of a core, for headroom and p99
    redis_core = rps * redis_run["redis_cpu_us"] / 1e6
    print(f"\nfor {live:,} live sessions at {rps:,} session next-words/s:")
    print(
        f"  replicas: {replicas} (a replica's core does {per_core:.0f} req/s at the measured "
        f"{redis_run['cpu_us']:.0f} us of CPU each; at 70% of it)"
    )
    print(
        f"  Redis memory: {live * mem['per_session'] / 2**30:.2f} GiB for the sessions "
        f"({mem['per_session']:.0f} B each)"
    )
    print(
        f"  Redis: {rps * nw['round_trips']:,.0f} round trips/s ({rps * nw['ops']:,.0f} commands/s "
        f"with the scripts'), {rps * (nw['in'] + nw['out']) / 2**20:.0f} "
        f"MiB/s of traffic, {redis_core:.2f} cores of Redis's one command thread "
        f"({redis_run['redis_cpu_us']:.1f} us a request)"
    )


if __name__ == "__main__":
    main()
