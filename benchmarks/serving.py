"""Serving benchmark: the real server, driven from other processes (wrk, an async client).

    python -m benchmarks.serving                 # full run (about 10 minutes on 2 cores)
    python -m benchmarks.serving --duration 3 --idle-sessions 20000   # quicker
    python -m benchmarks.serving --models gru gru-copy --parts models,memory

Prints, measured side by side in one run:
- requests/s and p50/p99 latency of session next-word over 1,000 live sessions at 1, 16, 64
  and 256 connections, next to GET /health on the same server, batching on and off;
- continuation words/s with 256 concurrent streams of 100 words, batched vs not;
- server RSS with 0 and 100,000 idle sessions;
- session next-word at 64 connections with the Redis store (one and two replicas) vs memory;
- session next-word at 64 connections with API keys on (`Authorization: Bearer`) vs off;
- with several --models: session next-word at 64 connections of each model on one server,
  driven in turn, and the RSS of 100,000 idle sessions of each;
- with --before CHECKOUT (another tree of this repo, e.g. `git worktree add /tmp/before REV`):
  that tree's server and this one's, up at once on one store and driven in turn: session
  next-word at 64 connections and /v1/completions with lists of 256 prompts (max_tokens 1,
  4 connections).
Needs `wrk` and `redis-server` (Debian packages). Trains the --models (`gru` by default) into
a temp store unless --store. The first of --models is the server's default model, which the
parts that name no model measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from launchers import AppProcess, RedisServer

CONNECTIONS = (1, 16, 64, 256)


class Server(AppProcess):
    """The app as the benchmarks run it: DEVICE from this environment (auto if unset),
    warnings only in its log, its output dropped."""

    def __init__(self, store: Path, cwd: Path | None = None, **env: str):
        defaults = {"DEVICE": os.environ.get("DEVICE", "auto"), "LOG_LEVEL": "warning"}
        super().__init__(store, capture=False, cwd=cwd, **(defaults | env))


def parse_latency(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, conns: int, duration: float, script: Path | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "10s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    pct = dict(re.findall(r"^\s*(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": parse_latency(pct["50"]),
        "p99": parse_latency(pct["99"]),
        "errors": int(errors.group(1)) if errors else 0,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }


def lua_sessions(ids: list[str], folder: Path, key: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sessions.lua"
    quoted = ",".join(f'"{i}"' for i in ids)
    auth = f', ["Authorization"] = "Bearer {key}"' if key else ""
    path.write_text(
        f"local ids = {{{quoted}}}\n"
        "local i = 0\n"
        f'local headers = {{["Content-Type"] = "application/json"{auth}}}\n'
        "request = function()\n"
        "  i = i + 1\n"
        "  local id = ids[(i % #ids) + 1]\n"
        '  return wrk.format("POST", "/v1/sessions/" .. id .. "/next-word", headers,\n'
        '                    \'{"text": "one", "top_k": 5}\')\n'
        "end\n"
    )
    return path


def lua_create(n: int, folder: Path, model: str) -> Path:
    path = folder / f"create-{model}.lua"
    path.write_text(
        "local made = 0\n"
        'wrk.method = "POST"\n'
        f'wrk.body = \'{{"model": "{model}"}}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "response = function(status)\n"
        "  made = made + 1\n"
        f"  if made >= {n} then wrk.thread:stop() end\n"
        "end\n"
    )
    return path


async def create_sessions(
    base: str, n: int, key: str | None = None, model: str | None = None
) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"text": "one ,", **({"model": model} if model else {})}
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as c:
        ids: list[str] = []
        for start in range(0, n, 100):
            rs = await asyncio.gather(
                *(c.post("/v1/sessions", json=body) for _ in range(min(100, n - start)))
            )
            ids += [r.json()["session_id"] for r in rs]
        return ids


def lua_post(folder: Path, name: str, path: str, body: dict[str, object]) -> Path:
    """A wrk script that POSTs `body` as JSON to `path`, every request the same."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"{name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{json.dumps(body)}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.path = "{path}"\n'
    )
    return script


def lua_continuation(words: int, stream: bool, folder: Path) -> Path:
    body = {"text": "one thousand one ,", "max_words": words, "stream": stream}
    return lua_post(folder, f"continuation-{stream}", "/v1/continuation", body)


def continuation_load(
    base: str, streams: int, words: int, duration: float, stream: bool, tmp: Path
) -> dict[str, float]:
    """`streams` connections, each asking for continuations of `words` words back to back."""
    script = lua_continuation(words, stream, tmp)
    r = wrk(f"{base}/v1/continuation", streams, duration, script)
    return {**r, "words_per_s": r["rps"] * words}


def live_sessions(base: str) -> int:
    text = httpx.get(f"{base}/metrics").text
    return int(sum(float(v) for v in re.findall(r"^sessions_live\{[^}]*\} (\S+)$", text, re.M)))


def serving_table(store: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode, env in (("batched", {}), ("unbatched", {"MAX_BATCH_SIZE": "1"})):
        with Server(store, **env) as srv:
            ids = asyncio.run(create_sessions(srv.base, args.sessions))
            script = lua_sessions(ids, tmp)
            wrk(f"{srv.base}/health", 16, 1)  # warm-up
            wrk(srv.base, 16, 1, script)
            for conns in CONNECTIONS:
                results[(mode, "health", conns)] = wrk(f"{srv.base}/health", conns, args.duration)
                results[(mode, "next-word", conns)] = wrk(srv.base, conns, args.duration, script)
                print(
                    f"  {mode:<9} {conns:>3} conns: next-word "
                    f"{results[(mode, 'next-word', conns)]['rps']:>8.0f} req/s",
                    flush=True,
                )
            for stream in (False, True):
                # unbatched, one round of 256 x 100 words takes seconds: give it several
                r = continuation_load(
                    srv.base, args.streams, args.words, max(args.duration, 12), stream, tmp
                )
                results[(mode, "continuation", stream)] = r
                print(
                    f"  {mode:<9} continuation (stream={stream}) {r['words_per_s']:>8.0f} words/s",
                    flush=True,
                )
    return results


def memory(
    store: Path, args: argparse.Namespace, tmp: Path, model: str
) -> tuple[float, float, int]:
    """Server RSS before and after `--idle-sessions` sessions of `model` that saw no text."""
    with Server(store, MAX_SESSIONS=str(args.idle_sessions * 2), ACCESS_LOG="false") as srv:
        wrk(f"{srv.base}/health", 4, 1)
        before = srv.rss_mib()
        script = lua_create(args.idle_sessions, tmp, model)
        while live_sessions(srv.base) < args.idle_sessions:
            wrk(f"{srv.base}/v1/sessions", 32, 120, script)
        n = live_sessions(srv.base)
        return before, srv.rss_mib(), n


def wrk_parallel(jobs: list[tuple[str, int, float, Path]]) -> list[dict[str, float]]:
    """Several wrk runs at once (one per replica); their results."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: wrk(job[0], job[1], job[2], job[3]), jobs))


def redis_table(store: Path, args: argparse.Namespace, tmp: Path) -> None:
    """Session next-word at 64 connections: memory vs Redis, one and two replicas."""
    rows = []
    with RedisServer(tmp / "redis") as redis:
        url = redis.url
        for label, env, replicas in (
            ("memory, 1 replica", {}, 1),
            ("redis, 1 replica", {"SESSION_BACKEND": "redis", "REDIS_URL": url}, 1),
            ("redis, 2 replicas", {"SESSION_BACKEND": "redis", "REDIS_URL": url}, 2),
        ):
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(Server(store, **env)) for _ in range(replicas)]
                ids = asyncio.run(create_sessions(servers[0].base, args.sessions))
                script = lua_sessions(ids, tmp)
                wrk(servers[0].base, 16, 1, script)  # warm-up
                results = wrk_parallel(
                    [(s.base, 64 // replicas, args.duration, script) for s in servers]
                )
                rps = sum(r["rps"] for r in results)
                p99 = max(r["p99"] for r in results)
                errors = sum(r["errors"] for r in results)
                rows.append((label, rps, p99, errors))
                print(f"  {label}: {rps:.0f} req/s", flush=True)
    memory_rps = rows[0][1]
    print(f"\nsession next-word, 64 connections in all, {args.sessions:,} sessions:")
    for label, rps, p99, errors in rows:
        print(
            f"  {label:<18} {rps:>8.0f} req/s  p99 {p99:>6.2f} ms  {rps / memory_rps:.2f}x memory"
            + (f"  ({errors} non-2xx)" if errors else "")
        )


def models_table(store: Path, args: argparse.Namespace, tmp: Path, rounds: int = 3) -> None:
    """Session next-word at 64 connections for each of --models, on one server: the models
    are driven in turn, `rounds` times, so a load from elsewhere on the machine falls on all
    alike; means over the rounds, each against the first model."""
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in args.models}
    with Server(store) as srv:
        scripts = {}
        for m in args.models:
            ids = asyncio.run(create_sessions(srv.base, args.sessions, model=m))
            scripts[m] = lua_sessions(ids, tmp / f"model-{m}")
            wrk(srv.base, 16, 1, scripts[m])  # warm-up
        for i in range(rounds):
            for m in args.models:
                runs[m].append(wrk(srv.base, 64, args.duration, scripts[m]))
            line = ", ".join(f"{m} {runs[m][-1]['rps']:.0f}" for m in args.models)
            print(f"  round {i + 1}: {line} req/s", flush=True)
    first = sum(r["rps"] for r in runs[args.models[0]]) / rounds
    print(
        f"\nsession next-word, 64 connections, {args.sessions:,} sessions of each model, "
        f"{rounds} rounds of {args.duration:g} s each, in turn, one server:"
    )
    for m, rs in runs.items():
        rps = sum(r["rps"] for r in rs) / rounds
        ratios = " ".join(
            f"{r['rps'] / f['rps']:.2f}" for r, f in zip(rs, runs[args.models[0]], strict=True)
        )
        errors = sum(r["errors"] for r in rs)
        print(
            f"  {m:<12} {rps:>8.0f} req/s (mean)  p99 {max(r['p99'] for r in rs):>6.2f} ms "
            f"(worst round)  {rps / first:.2f}x {args.models[0]} (rounds: {ratios})"
            + (f"  ({errors} non-2xx)" if errors else "")
        )


BENCH_KEY = "bench-key-0123456789abcdef"


def keys_table(store: Path, args: argparse.Namespace, tmp: Path, rounds: int = 3) -> None:
    """Session next-word at 64 connections: API keys off vs on. Both servers run at once and
    are driven in turn, `rounds` times (off, on, off, on, ...), so a load from elsewhere on the
    machine falls on both alike; totals over the rounds, and each round's ratio."""
    configs = (
        ("keys off", {}, None),
        (
            "keys on",
            {"API_KEYS": f"{BENCH_KEY},another-key-0123456789", "MAX_SESSIONS_PER_KEY": "100000"},
            BENCH_KEY,
        ),
    )
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in configs}
    with contextlib.ExitStack() as stack:
        targets = []
        for label, env, key in configs:
            srv = stack.enter_context(Server(store, **env))
            ids = asyncio.run(create_sessions(srv.base, args.sessions, key))
            script = lua_sessions(ids, tmp / label.replace(" ", "-"), key)
            wrk(srv.base, 16, 1, script)  # warm-up
            targets.append((label, srv.base, script))
        for i in range(rounds):
            for label, base, script in targets:
                runs[label].append(wrk(base, 64, args.duration, script))
            off, on = runs["keys off"][-1]["rps"], runs["keys on"][-1]["rps"]
            print(f"  round {i + 1}: off {off:.0f}, on {on:.0f} req/s: {on / off:.2f}x", flush=True)
    rows = [
        (
            label,
            sum(r["rps"] for r in rs) / len(rs),
            max(r["p99"] for r in rs),
            sum(r["errors"] for r in rs),
        )
        for label, rs in runs.items()
    ]
    off_rps = rows[0][1]
    print(
        f"\nsession next-word, 64 connections, {args.sessions:,} sessions, API keys off vs on, "
        f"{rounds} rounds of {args.duration:g} s each, in turn:"
    )
    for label, rps, p99, errors in rows:
        print(
            f"  {label:<8} {rps:>8.0f} req/s (mean)  p99 {p99:>6.2f} ms (worst round)"
            f"  {rps / off_rps:.2f}x keys off" + (f"  ({errors} non-2xx)" if errors else "")
        )


def trees_table(store: Path, args: argparse.Namespace, tmp: Path, rounds: int = 3) -> None:
    """This tree's server against --before's, both up at once on one store, driven in turn
    `rounds` times (before, after, before, ...), so a load from elsewhere falls on both alike:
    session next-word at 64 connections and at one (a lone client: its p50 is the latency of a
    request), /v1/completions with lists of 256 prompts, then GET /health at 64 connections
    (the cost of the layers around a route that does nothing). Beside the rates, the same per
    CPU-second of the server process: less noisy on a shared machine."""
    prompts = prompt_list()
    batch = lua_post(
        tmp / "trees",
        "batch",
        "/v1/completions",
        {"model": args.models[0], "prompt": prompts, "max_tokens": 1, "temperature": 0},
    )
    loads = (
        ("next-word", 64, None, 1, ""),
        ("next-word, one client", 1, None, 1, ""),
        ("completions, 256 prompts", 4, batch, len(prompts), ""),
        ("GET /health", 64, None, 1, "/health"),
    )
    trees = (("before", args.before), ("after", None))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        targets = []
        for label, cwd in trees:
            srv = stack.enter_context(Server(store, cwd=cwd, LOG_LEVEL=args.log_level))
            ids = asyncio.run(create_sessions(srv.base, args.sessions))
            script = lua_sessions(ids, tmp / f"trees-{label}")
            wrk(srv.base, 16, 1, script)  # warm-up
            wrk(srv.base, 4, 1, batch)
            targets.append((label, srv, script))
        for i in range(rounds):
            for load, conns, body, _, path in loads:
                for label, srv, script in targets:
                    cpu = srv.cpu_s()
                    r = wrk(
                        srv.base + path, conns, args.duration, body or (None if path else script)
                    )
                    r["cpu_s"] = srv.cpu_s() - cpu
                    runs.setdefault((load, label), []).append(r)
                b, a = runs[(load, "before")][-1]["rps"], runs[(load, "after")][-1]["rps"]
                print(f"  round {i + 1}, {load}: before {b:.0f}, after {a:.0f} req/s", flush=True)
    print(
        f"\nthis tree against {args.before}, {rounds} rounds of {args.duration:g} s each, in turn:"
    )
    for load, conns, _, per, _ in loads:
        rps = {t: sum(r["rps"] for r in runs[(load, t)]) / rounds for t, _ in trees}
        per_cpu = {
            t: sum(r["rps"] * args.duration for r in runs[(load, t)])
            / sum(r["cpu_s"] for r in runs[(load, t)])
            for t, _ in trees
        }
        ratios = " ".join(
            f"{a['rps'] / b['rps']:.2f}"
            for a, b in zip(runs[(load, "after")], runs[(load, "before")], strict=True)
        )
        errors = sum(r["errors"] for t, _ in trees for r in runs[(load, t)])
        print(
            f"  {load:<26} {conns:>2} conns: before {rps['before'] * per:>8.0f}, after "
            f"{rps['after'] * per:>8.0f} {'predictions' if per > 1 else 'req'}/s (means): "
            f"{rps['after'] / rps['before']:.2f}x (rounds: {ratios}); per server CPU-second: "
            f"{per_cpu['before'] * per:.0f} vs {per_cpu['after'] * per:.0f}, "
            f"{per_cpu['after'] / per_cpu['before']:.2f}x"
            + (f"  ({errors} non-2xx)" if errors else "")
        )
        if conns == 1:
            p50 = {t: statistics.median(r["p50"] for r in runs[(load, t)]) for t, _ in trees}
            print(
                f"  {'':<26}     p50 (median): before {p50['before']:.3f} ms, after "
                f"{p50['after']:.3f} ms"
            )


WORDS = ["one", "two", "three", "seven", "eight", "nine", "twenty", "hundred", "thousand"]


def prompt_list(n: int = 256) -> list[str]:
    """`n` short prompts, most of them different (the completions benchmarks' lists)."""
    return [f"{WORDS[i % 9]} thousand {WORDS[(i // 9) % 9]} ," for i in range(n)]


def train_store(folder: Path, variants: Sequence[str] = ("gru",)) -> Path:
    for variant in variants:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "train",
                "--variant",
                variant,
                "--store",
                str(folder),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return folder


def serving_report(r: dict[Any, Any], args: argparse.Namespace) -> None:
    print(f"\nsession next-word over {args.sessions:,} live sessions, wrk -t1 -d{args.duration:g}s")
    print(
        f"{'conns':>5} | {'health req/s':>12} | {'batched req/s':>13} {'p50 ms':>7} "
        f"{'p99 ms':>7} | {'unbatched req/s':>15} {'p50 ms':>7} {'p99 ms':>7} | ratio"
    )
    for conns in CONNECTIONS:
        h, b, u = (
            r[("batched", "health", conns)],
            r[("batched", "next-word", conns)],
            r[("unbatched", "next-word", conns)],
        )
        errors = b["errors"] + u["errors"]
        print(
            f"{conns:>5} | {h['rps']:>12.0f} | {b['rps']:>13.0f} {b['p50']:>7.2f} "
            f"{b['p99']:>7.2f} | {u['rps']:>15.0f} {u['p50']:>7.2f} {u['p99']:>7.2f} | "
            f"{b['rps'] / u['rps']:.2f}x" + (f"  ({errors} non-2xx)" if errors else "")
        )
    print(
        f"\ncontinuation, {args.streams} concurrent clients asking {args.words} words "
        "each, back to back:"
    )
    for stream in (False, True):
        cb = r[("batched", "continuation", stream)]
        cu = r[("unbatched", "continuation", stream)]
        print(
            f"  {'SSE stream' if stream else 'JSON'}: batched {cb['words_per_s']:,.0f} "
            f"words/s (p50 {cb['p50']:.0f} ms), unbatched {cu['words_per_s']:,.0f} words/s"
            f" (p50 {cu['p50']:.0f} ms): {cb['words_per_s'] / cu['words_per_s']:.1f}x"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, help="model store (default: train gru into a temp one)")
    p.add_argument("--duration", type=float, default=6, help="seconds per wrk run")
    p.add_argument("--sessions", type=int, default=1000, help="live sessions for next-word")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--words", type=int, default=100)
    p.add_argument("--idle-sessions", type=int, default=100_000)
    p.add_argument(
        "--models",
        nargs="+",
        default=["gru"],
        help="models to measure (the first is the server's default); trained unless --store",
    )
    p.add_argument(
        "--parts",
        default="serving,memory,redis,keys,models",
        help="comma-separated: serving, memory, redis, keys, models (with 2+ --models), "
        "trees (with --before)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of the keys, models and trees parts"
    )
    p.add_argument(
        "--before",
        type=Path,
        help="another checkout of this repo to measure this tree against (the trees part)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        help="the trees part's servers' LOG_LEVEL (info: an access-log line per request)",
    )
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or train_store(tmp / "store", args.models)
        os.environ.setdefault("DEFAULT_MODEL", args.models[0])  # the servers' default
        import torch

        device = os.environ.get("DEVICE", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}, "
            f"torch {torch.__version__}"
        )
        if "serving" in args.parts:
            serving_report(serving_table(store, args, tmp), args)
        if "redis" in args.parts:
            redis_table(store, args, tmp)
        if "keys" in args.parts:
            keys_table(store, args, tmp, args.rounds)
        if "models" in args.parts and len(args.models) > 1:
            models_table(store, args, tmp, args.rounds)
        if args.before is not None:
            trees_table(store, args, tmp, args.rounds)
        if "memory" in args.parts:
            print()
            for model in args.models:
                before, after, n = memory(store, args, tmp, model)
                added = after - before
                print(
                    f"RSS, {model}: {before:.1f} MiB with 0 sessions, {after:.1f} MiB with "
                    f"{n:,} idle sessions: +{added:.1f} MiB ({added * 2**20 / n:.0f} "
                    f"bytes/session; {added * 100_000 / n:.1f} MiB per 100,000)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
