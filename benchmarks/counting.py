"""Can the service count past 7,999? The real server, over HTTP, on numbers of valid.txt.

    python -m benchmarks.counting --store store [--models gru-copy gru] [--trials 200]

For each model, two figures, side by side:
- continuation: given four consecutive numbers n..n+3 from 8,001..9,999 (", " between them and
  after the last), `POST /v1/continuation` with `stop: [","]`, greedy, returns exactly n+4;
  the share of `--trials` random starting points where it does (target for gru-copy: >= 97%);
- counting on: a session fed two consecutive numbers continues alone, number after number
  (a continuation stopped at ",", then the "," fed), for `--run` numbers; how many sessions of
  `--sessions` get all of them right (target: every one, 25 numbers each).
Starting points never run past 9,999.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import httpx

from benchmarks.serving import Server
from training.data import number_words


def text_of(numbers: range) -> str:
    return "".join(f"{number_words(n)}, " for n in numbers)


def continuation_share(client: httpx.Client, model: str, trials: int, rng: random.Random) -> float:
    right = 0
    for _ in range(trials):
        n = rng.randint(8001, 9999 - 4)
        r = client.post(
            "/v1/continuation",
            json={"text": text_of(range(n, n + 4)), "model": model, "stop": [","], "max_words": 8},
        )
        r.raise_for_status()
        right += r.json()["text"] == number_words(n + 4)
    return right / trials


def counts_on(client: httpx.Client, model: str, start: int, run: int) -> int:
    """How many numbers a session fed `start`, `start+1` gets right in a row (at most run)."""
    r = client.post("/v1/sessions", json={"model": model, "text": text_of(range(start, start + 2))})
    r.raise_for_status()
    sid = r.json()["session_id"]
    try:
        for i in range(run):
            r = client.post(
                f"/v1/sessions/{sid}/continuation", json={"stop": [","], "max_words": 8}
            )
            r.raise_for_status()
            if r.json()["text"] != number_words(start + 2 + i):
                return i
            client.post(f"/v1/sessions/{sid}/next-word", json={"text": ","}).raise_for_status()
        return run
    finally:
        client.delete(f"/v1/sessions/{sid}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=["gru-copy", "gru"])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--run", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"{'model':<12}{'continuation right':>20}{'sessions counting ' + str(args.run):>24}")
    with Server(args.store) as server, httpx.Client(base_url=server.base, timeout=60) as client:
        for model in args.models:
            rng = random.Random(args.seed)
            share = continuation_share(client, model, args.trials, rng)
            starts = [rng.randint(8001, 9999 - args.run - 2) for _ in range(args.sessions)]
            runs = [counts_on(client, model, s, args.run) for s in starts]
            perfect = sum(r == args.run for r in runs)
            print(
                f"{model:<12}{share:>19.1%} {perfect:>10}/{args.sessions} "
                f"(mean {sum(runs) / len(runs):.1f} numbers)",
                flush=True,
            )


if __name__ == "__main__":
    main()
