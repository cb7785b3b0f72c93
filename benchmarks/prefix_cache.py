"""Prefix cache benchmark: stateless next-word with long prompts that share a long prefix.

    python -m benchmarks.prefix_cache                       # trains gru into a temp store
    python -m benchmarks.prefix_cache --store DIR --model gru-copy --duration 5

Two servers up at once on one store, the prefix cache on (PREFIX_CACHE_MB) and off (0),
driven in turn (`--rounds` rounds, so a load from elsewhere on the machine falls on both
alike) with wrk at 64 connections: POST /v1/next-word of 1,200-token prompts (words and ","s,
within MAX_TEXT_CHARS) that share their first 1,100 tokens, the rest each request's own
(random numbers drawn by wrk's script: no request repeats another's text). Prints
requests/s of each, the ratio, and the cache's hits, misses and bytes from the cached
server's /metrics. Needs `wrk` (a Debian package).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
from pathlib import Path

import httpx

from benchmarks.serving import Server, train_store, wrk
from training.data import number_words

PROMPT_TOKENS = 1_200
SHARED_TOKENS = 1_100
JSON = {"Content-Type": "application/json"}


def shared_prefix() -> list[str]:
    """SHARED_TOKENS tokens: numbers counting up from 8,001 (the validation range's, of the
    longest words), cut where the count falls (inside a number, as a prompt may be)."""
    words: list[str] = []
    k = 8001
    while len(words) < SHARED_TOKENS:
        words += [*number_words(k).split(), ","]
        k += 1
    return words[:SHARED_TOKENS]


def suffix(rng: random.Random) -> list[str]:
    """PROMPT_TOKENS - SHARED_TOKENS tokens of random numbers of the data's range."""
    words: list[str] = []
    while len(words) < PROMPT_TOKENS - SHARED_TOKENS:
        words += [*number_words(rng.randint(1, 9999)).split(), ","]
    return words[: PROMPT_TOKENS - SHARED_TOKENS]


def lua_prompts(model: str, folder: Path, seed: int) -> Path:
    """A wrk script that POSTs to /v1/next-word the shared prefix and a suffix of its own to
    every request: random numbers (from 4,096 drawn here) up to PROMPT_TOKENS tokens, so no
    request repeats another's text (a repeat would find its own states)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = ",".join(
        "{" + ",".join(f'"{w}"' for w in [*number_words(rng.randint(1, 9999)).split(), ","]) + "}"
        for _ in range(4096)
    )
    head = json.dumps({"model": model, "top_k": 5, "text": ""})[:-2]  # ... "text": "
    path = folder / "prefix.lua"
    path.write_text(
        f"local pool = {{{pool}}}\n"
        f"local head = [[{head}{' '.join(shared_prefix())} ]]\n"
        f"local want = {PROMPT_TOKENS - SHARED_TOKENS}\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        f"math.randomseed({seed})\n"
        "request = function()\n"
        "  local words = {}\n"
        "  while #words < want do\n"
        "    for _, w in ipairs(pool[math.random(#pool)]) do\n"
        "      if #words < want then words[#words + 1] = w end\n"
        "    end\n"
        "  end\n"
        '  local body = head .. table.concat(words, " ") .. \'"}\'\n'
        '  return wrk.format("POST", "/v1/next-word", headers, body)\n'
        "end\n"
    )
    return path


def cache_metrics(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    out: dict[str, float] = {}
    for name, value in re.findall(r"^(prefix_cache_\w+)\{[^}]*\} (\S+)$", text, re.M):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="a model store (default: train gru into a temp one)")
    ap.add_argument("--model", default="gru")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of each wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache-mb", default="32", help="PREFIX_CACHE_MB of the cached server")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or train_store(tmp / "store", (args.model,))
        rng = random.Random(1)
        texts = [" ".join(shared_prefix() + suffix(rng)) for _ in range(200)]
        chars = max(len(t) for t in texts)
        print(
            f"prompts of {PROMPT_TOKENS:,} tokens (words and ','s; up to {chars:,} characters "
            f"in 200 drawn here, MAX_TEXT_CHARS is 10,000), the first {SHARED_TOKENS:,} shared, "
            f"the rest each request's own; model {args.model}"
        )
        bodies = [json.dumps({"text": t, "model": args.model, "top_k": 5}) for t in texts[:2]]
        script = lua_prompts(args.model, tmp, seed=2)
        runs: dict[str, list[float]] = {"cache on": [], "cache off": []}
        with (
            Server(store, PREFIX_CACHE_MB=args.cache_mb) as on,
            Server(store, PREFIX_CACHE_MB="0") as off,
        ):
            servers = {"cache on": on, "cache off": off}
            for srv in servers.values():
                r = httpx.post(
                    f"{srv.base}/v1/next-word", content=bodies[0], headers=JSON, timeout=30
                )
                assert r.status_code == 200, r.text
                wrk(srv.base, 16, 1, script)  # warm-up (and the shared prefix's state kept)
            answers = [
                httpx.post(
                    f"{srv.base}/v1/next-word", content=bodies[1], headers=JSON, timeout=30
                ).json()
                for srv in servers.values()
            ]
            assert answers[0]["next"] == answers[1]["next"] or all(
                abs(a["prob"] - b["prob"]) < 1e-6
                for a, b in zip(answers[0]["next"], answers[1]["next"], strict=True)
            ), "the cached server answers otherwise"
            for i in range(args.rounds):
                line = []
                for label, srv in servers.items():
                    result = wrk(srv.base, 64, args.duration, script)
                    assert result["errors"] == 0, f"{label}: {result['errors']} non-2xx"
                    runs[label].append(result["rps"])
                    line.append(f"{label} {result['rps']:.0f}")
                ratio = runs["cache on"][-1] / runs["cache off"][-1]
                print(f"  round {i + 1}: {', '.join(line)} req/s ({ratio:.2f}x)", flush=True)
            counts = cache_metrics(on.base)
        mean = {label: sum(rs) / len(rs) for label, rs in runs.items()}
        print(
            f"\nstateless next-word, 64 connections, {args.rounds} rounds of "
            f"{args.duration:g} s each, in turn, two servers up at once:"
        )
        for label, rps in mean.items():
            print(f"  {label:<10} {rps:>8.0f} req/s (mean)")
        print(f"  with the cache: {mean['cache on'] / mean['cache off']:.2f}x the requests/s")
        hits = counts.get("prefix_cache_hits_total", 0)
        misses = counts.get("prefix_cache_misses_total", 0)
        print(
            f"  cache: {hits:,.0f} hits, {misses:,.0f} misses, "
            f"{counts.get('prefix_cache_tokens_saved_total', 0):,.0f} tokens not fed, "
            f"{counts.get('prefix_cache_entries', 0):,.0f} entries in "
            f"{counts.get('prefix_cache_bytes', 0):,.0f} bytes"
        )


if __name__ == "__main__":
    main()
