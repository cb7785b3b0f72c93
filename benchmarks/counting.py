"""Can the service count from anywhere? The real server, over HTTP, from one to 99,999.

    python -m benchmarks.counting --store store [--models gru-copy gru] [--trials 60]

For each model, side by side:
- the next number by range (training.evaluation.COUNTING_RANGES: 1..99, 100..999,
  1,000..7,999, 8,000..9,999, 10,000..99,999): given four consecutive numbers n..n+3 of the
  range (", " between them and after the last), `POST /v1/continuation` with `stop: [","]`,
  greedy, returns exactly n+4; the share of `--trials` random starts where it does;
- across 9,999 -> 10,000: the same for the 21 prompts of 1 to 8 numbers ending at 9,999,
  10,000 or 10,001 (training.evaluation.crossing_trials);
- counting on alone: a session fed `one,` continues number after number (a continuation
  stopped at ",", then the "," fed) for 120 numbers (across 99 -> 100), and one fed
  `nine thousand nine hundred ninety,` for 30 (to ten thousand twenty); how many it gets
  right in a row;
- `--sessions` more sessions fed two numbers of 8,001..9,999 count on for `--run` numbers.
Nothing here is trained on: train.txt holds 1..7,999, valid.txt 8,001..9,999, and nothing
holds a number of five digits.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import httpx

from benchmarks.serving import Server
from training.data import number_words
from training.evaluation import (
    COUNTING_CARRY,
    COUNTING_RANGES,
    crossing_name,
    crossing_trials,
    number_text,
)


def next_right(client: httpx.Client, model: str, start: int, fed: int) -> bool:
    """Given start .. start+fed-1, is the continuation exactly the number after them?"""
    r = client.post(
        "/v1/continuation",
        json={
            "text": number_text(range(start, start + fed)),
            "model": model,
            "stop": [","],
            "max_words": 9,  # a five-digit number has at most 7 words, then its ","
        },
    )
    r.raise_for_status()
    return bool(r.json()["text"] == number_words(start + fed))


def counts_on(client: httpx.Client, model: str, start: int, fed: int, run: int) -> int:
    """How many numbers a session fed start .. start+fed-1 gets right in a row (at most run)."""
    r = client.post(
        "/v1/sessions", json={"model": model, "text": number_text(range(start, start + fed))}
    )
    r.raise_for_status()
    sid = r.json()["session_id"]
    try:
        for i in range(run):
            r = client.post(
                f"/v1/sessions/{sid}/continuation", json={"stop": [","], "max_words": 9}
            )
            r.raise_for_status()
            if r.json()["text"] != number_words(start + fed + i):
                return i
            client.post(f"/v1/sessions/{sid}/next-word", json={"text": ","}).raise_for_status()
        return run
    finally:
        client.delete(f"/v1/sessions/{sid}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=["gru-copy", "gru"])
    p.add_argument("--trials", type=int, default=60, help="random starts a range")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--run", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    crossing = crossing_trials(COUNTING_CARRY)
    names = [name for name, _, _ in COUNTING_RANGES] + [
        crossing_name(COUNTING_CARRY),
        "from 1 (of 120)",
        f"from {COUNTING_CARRY - 10:,} (of 30)",
        f"count {args.run}",
    ]
    widths = [max(len(n), 6) + 2 for n in names]
    print(f"{'model':<12}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True)))
    with Server(args.store) as server, httpx.Client(base_url=server.base, timeout=60) as client:
        for model in args.models:
            rng = random.Random(args.seed)
            cells = []
            for _, lo, hi in COUNTING_RANGES:
                starts = [rng.randint(lo, hi - 4) for _ in range(args.trials)]
                share = sum(next_right(client, model, s, 4) for s in starts) / len(starts)
                cells.append(f"{share:.3f}")
            share = sum(next_right(client, model, s, f) for s, f in crossing) / len(crossing)
            cells.append(f"{share:.3f}")
            cells.append(str(counts_on(client, model, 1, 1, 120)))
            cells.append(str(counts_on(client, model, COUNTING_CARRY - 10, 1, 30)))
            starts = [rng.randint(8001, 9999 - args.run - 2) for _ in range(args.sessions)]
            perfect = sum(counts_on(client, model, s, 2, args.run) == args.run for s in starts)
            cells.append(f"{perfect}/{args.sessions}")
            print(
                f"{model:<12}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)),
                flush=True,
            )


if __name__ == "__main__":
    main()
