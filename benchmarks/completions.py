"""OpenAI completions benchmark: the real server driven by wrk (Debian's package).

    python -m benchmarks.completions [--store DIR] [--duration 6]

Prints, measured side by side in one run on one server:
- next-word predictions/s through POST /v1/completions, lists of 256 prompts, max_tokens 1;
- streamed words/s of 256 concurrent streams of 100 words, /v1/completions (stream: true)
  next to /v1/continuation (stream: true), one SSE event per word in both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.serving import Server, train_store, wrk

WORDS = ["one", "two", "three", "seven", "eight", "nine", "twenty", "hundred", "thousand"]


def lua_post(folder: Path, name: str, path: str, body: dict[str, object]) -> Path:
    script = folder / f"{name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{json.dumps(body)}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.path = "{path}"\n'
    )
    return script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, help="model store (default: train gru into a temp one)")
    p.add_argument("--duration", type=float, default=6, help="seconds per wrk run")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--words", type=int, default=100)
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store = args.store or train_store(tmp / "store")
        prompts = [f"{WORDS[i % 9]} thousand {WORDS[(i // 9) % 9]} ," for i in range(256)]
        batch = lua_post(
            tmp,
            "batch",
            "/v1/completions",
            {"model": "gru", "prompt": prompts, "max_tokens": 1, "temperature": 0},
        )
        text = "one thousand one ,"
        completion_stream = lua_post(
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
        )
        continuation_stream = lua_post(
            tmp,
            "kstream",
            "/v1/continuation",
            {"text": text, "max_words": args.words, "stream": True},
        )
        with Server(store, ACCESS_LOG="false") as srv:
            wrk(srv.base, 4, 1, batch)  # warm-up
            print("next-word predictions through /v1/completions, 256 prompts a request:")
            for conns in (1, 4, 16):
                r = wrk(srv.base, conns, args.duration, batch)
                print(
                    f"  {conns:>2} conns: {r['rps']:>7.0f} req/s = {r['rps'] * 256:>9,.0f} "
                    f"predictions/s  (p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms)"
                    + (f"  ({r['errors']} non-2xx)" if r["errors"] else ""),
                    flush=True,
                )
            print(f"\n{args.streams} concurrent streams of {args.words} words, back to back:")
            for label, script in (
                ("/v1/completions ", completion_stream),
                ("/v1/continuation", continuation_stream),
            ):
                wrk(srv.base, args.streams, 2, script)  # warm-up
                r = wrk(srv.base, args.streams, max(args.duration, 12), script)
                print(
                    f"  {label} stream: {r['rps'] * args.words:>9,.0f} words/s "
                    f"(p50 {r['p50']:.0f} ms)"
                    + (f"  ({r['errors']} non-2xx)" if r["errors"] else ""),
                    flush=True,
                )


if __name__ == "__main__":
    main()
