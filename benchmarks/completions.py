"""OpenAI completions benchmark: the real server driven by wrk (Debian's package).

    python -m benchmarks.completions [--store DIR] [--duration 6] [--rounds 2]

Prints, measured side by side in one run:
- next-word predictions/s through POST /v1/completions, lists of 256 prompts, max_tokens 1,
  greedy, at 1, 4 and 16 connections;
- streamed words/s of 256 concurrent streams of 100 words, /v1/completions (stream: true) next
  to /v1/continuation (stream: true), one SSE event per word in both, on two servers up at
  once: the default SSE_FLUSH_MS and SSE_FLUSH_MS=0 (a write as soon as a word is ready, as
  before the writer spaced its sends). The four are driven in turn, `--rounds` times, so a
  load from elsewhere on the machine falls on all alike.
Beside each rate, the same per CPU-second of the server process (/proc: user + system):
what one core would do if the server had it alone, the machine being shared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from app.core.config import Settings
from benchmarks.serving import Server, lua_post, prompt_list, train_store, wrk

EARLIER_SSE = 23_694  # words/s of 256 streams before (docs/benchmarks.md, an idle machine)
GOAL = 2.5


def load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, help="model store (default: train gru into a temp one)")
    p.add_argument("--duration", type=float, default=6, help="seconds per wrk run")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--words", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the four stream runs")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    flush = Settings.model_fields["SSE_FLUSH_MS"].default
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store = args.store or train_store(tmp / "store")
        prompts = prompt_list()
        batch = lua_post(
            tmp,
            "batch",
            "/v1/completions",
            {"model": "gru", "prompt": prompts, "max_tokens": 1, "temperature": 0},
        )
        text = "one thousand one ,"
        scripts = {
            "/v1/completions ": lua_post(
                tmp,
                "cstream",
                "/v1/completions",
                {
                    "model": "gru",
                    "prompt": text,
                    "max_tokens": args.words,
                    "temperature": 0,
                    "stream": True,
                },
            ),
            "/v1/continuation": lua_post(
                tmp,
                "kstream",
                "/v1/continuation",
                {"model": "gru", "text": text, "max_words": args.words, "stream": True},
            ),
        }
        with contextlib.ExitStack() as stack:
            servers = {
                f"SSE_FLUSH_MS={flush:g}": stack.enter_context(Server(store, ACCESS_LOG="false")),
                "SSE_FLUSH_MS=0": stack.enter_context(
                    Server(store, ACCESS_LOG="false", SSE_FLUSH_MS="0")
                ),
            }
            srv = next(iter(servers.values()))
            wrk(srv.base, 4, 1, batch)  # warm-up
            print("next-word predictions through /v1/completions, 256 prompts a request:")
            for conns in (1, 4, 16):
                cpu = srv.cpu_s()
                r = wrk(srv.base, conns, args.duration, batch)
                per_cpu = r["rps"] * 256 * args.duration / (srv.cpu_s() - cpu)
                print(
                    f"  {conns:>2} conns: {r['rps']:>7.0f} req/s = {r['rps'] * 256:>9,.0f} "
                    f"predictions/s, {per_cpu:>9,.0f} per server CPU-second"
                    f"  (p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms)"
                    + (f"  ({r['errors']} non-2xx)" if r["errors"] else ""),
                    flush=True,
                )
            print(
                f"\n{args.streams} concurrent streams of {args.words} words, back to back "
                f"({load()}):"
            )
            runs: dict[tuple[str, str], list[float]] = {}
            cpus: dict[tuple[str, str], list[float]] = {}
            for srv in servers.values():
                for script in scripts.values():
                    wrk(srv.base, args.streams, 2, script)  # warm-up
            for i in range(args.rounds):
                for label, srv in servers.items():
                    for route, script in scripts.items():
                        seconds = max(args.duration, 12)
                        cpu = srv.cpu_s()
                        r = wrk(srv.base, args.streams, seconds, script)
                        words = r["rps"] * args.words
                        per_cpu = words * seconds / (srv.cpu_s() - cpu)
                        runs.setdefault((label, route), []).append(words)
                        cpus.setdefault((label, route), []).append(per_cpu)
                        print(
                            f"  round {i + 1}, {label:<16} {route} stream: {words:>9,.0f} words/s"
                            f", {per_cpu:>9,.0f} per server CPU-second (p50 {r['p50']:.0f} ms)"
                            + (f"  ({r['errors']} non-2xx)" if r["errors"] else ""),
                            flush=True,
                        )
            print(f"\nmean over {args.rounds} rounds; goal {GOAL}x {EARLIER_SSE:,} words/s:")
            for (label, route), got in runs.items():
                mean = sum(got) / len(got)
                per_cpu = sum(cpus[label, route]) / len(got)
                print(
                    f"  {label:<16} {route} stream: {mean:>9,.0f} words/s "
                    f"= {mean / EARLIER_SSE:.2f}x (best round {max(got):,.0f}); "
                    f"{per_cpu:,.0f} per server CPU-second = {per_cpu / EARLIER_SSE:.2f}x"
                )
    print(load())


if __name__ == "__main__":
    main()
