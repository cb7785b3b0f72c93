"""Training benchmark: each variant's recipe (training.loop.RECIPES) over several seeds.

    python -m benchmarks.training --seeds 3 [--variants gru gru-copy]
    python -m benchmarks.training --proxy --variants gru-copy [--layers 2 --epochs 30 ...]
    python -m benchmarks.training --proxy carry --variants gru-copy --seed-list 0 1 2 42

For each variant: final valid accuracy of the seed's evaluation (64 streams, bptt 40,
stateful; mean, min, sd), one stream over the whole of valid.txt (mean, min), accuracy after a
"," and on "thousand" (mean), parameters, seconds per epoch and per whole training run, all
from one run on this machine, next to the seed notebook's figures where it has one.

`--proxy` trains on train.txt's 1..6,999 and evaluates on its 7,001..7,999 ("seven" is then a
thousands word never seen in training, as "eight" and "nine" are in valid.txt): design choices
are judged there, never on valid.txt. `--proxy carry` trains on 1..5,999 and evaluates on
6,001..7,999: two unseen thousands words and the carry 6,999 -> 7,000 from one into the other,
as valid.txt's 8,999 -> 9,000; its counting check adds the sessions that cross that carry (fed
two numbers from 6,974..6,999, so the 25 numbers counted on hold 7,000), reported apart.
`--proxy nine` is the carry split without 1..10 in training: `--counting` adds the carry 9 -> 10,
whose offered word "nine" answers "one" at 999 -> one thousand (as at 9,999 -> ten thousand). The
recipe flags (`--epochs`, `--layers`, ...) override
each variant's recipe, for trying designs; `--seed-list` picks seeds other than 0..N-1.
`--show-misses` (with `--counting`) prints what each seed answers where the counting check
counts it wrong.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from dataclasses import replace

import torch

from model_store import VARIANTS, count_parameters, resolve_device
from training.cli import recipe_flags
from training.data import PROXIES, VALID_RANGE, load_data, proxy_data
from training.evaluation import (
    COUNTING_CARRY,
    COUNTING_RANGES,
    NINE_PROXY_CARRY,
    PROXY_COUNTING_CARRY,
    PROXY_COUNTING_RANGES,
    breakdown,
    counting_misses,
    counting_report,
    counts_on,
    greedy_words,
)
from training.loop import RECIPES, train
from training.report import format_counting

SEED_NOTEBOOK = {"gru": 0.774, "gru-cell": 0.745, "gru-custom": 0.685}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="instead of --seeds")
    p.add_argument(
        "--proxy",
        nargs="?",
        const="seven",
        choices=list(PROXIES),
        help="seven (no value): train 1..6,999, evaluate 7,001..7,999; carry: train 1..5,999,"
        " evaluate 6,001..7,999 (crosses 6,999 -> 7,000); nine: carry's without 1..10 in"
        " training, the counting check adds the carry 9 -> 10",
    )
    p.add_argument("--epochs", type=int, default=None, help="default: each variant's recipe")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None, dest="n_layers")
    p.add_argument("--copy-window", type=int, default=None)
    p.add_argument("--key-size", type=int, default=None)
    p.add_argument("--reset", type=float, default=None)
    p.add_argument("--restart-begin", type=float, default=None)
    p.add_argument("--restart-carry", type=float, default=None)
    p.add_argument("--restart-numbers", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--copy-start", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--restart-bos", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--copy-value", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--copy-lookahead", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--wd", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--sessions", type=int, default=200, help="counting check: sessions a seed")
    p.add_argument("--run", type=int, default=25, help="counting check: numbers a session")
    p.add_argument(
        "--counting",
        action="store_true",
        help="also count from anywhere: the next-number rate by range, across the carry into a "
        "new count unit, and sessions from one (120 numbers) and across that carry (30), "
        "mean and min over seeds",
    )
    p.add_argument(
        "--show",
        nargs="+",
        default=[],
        metavar="TEXT",
        help="print each seed's greedy continuation of each TEXT (read after xxbos)",
    )
    p.add_argument("--show-words", type=int, default=8, help="words --show generates")
    p.add_argument(
        "--show-misses",
        action="store_true",
        help="with --counting: print each prompt of the counting check a seed gets wrong (and"
        " where a session from one or across the carry goes wrong) with its greedy"
        " continuation, --show-words words",
    )
    args = p.parse_args()
    if args.show_misses and not args.counting:
        p.error("--show-misses shows the counting check's misses: it needs --counting")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    overrides = {k: v for k, v in recipe_flags(args).items() if k != "device"}
    data = proxy_data(args.proxy) if args.proxy else load_data()
    # The counting check of benchmarks/counting.py, in process, on the evaluated numbers: the
    # next number after four (greedy, exactly right), and sessions fed two numbers counting on.
    numbers = PROXIES[args.proxy][1] if args.proxy else VALID_RANGE
    rng = random.Random(0)
    next_starts = [rng.randint(numbers[0], numbers[-1] - 4) for _ in range(args.sessions)]
    run_starts = [rng.randint(numbers[0], numbers[-1] - args.run - 1) for _ in range(args.sessions)]
    # Sessions whose counting crosses a thousands carry inside the evaluated numbers (fed
    # x,974..x,998 and the number after, so that x+1,000 is among the next `run`).
    carry_starts = [
        s
        for k in range(numbers[0] // 1000 + 1, numbers[-1] // 1000 + 1)
        for s in range(k * 1000 - args.run - 1, k * 1000 - 1)
        if s >= numbers[0]
    ]
    ranges, carry = (
        (PROXY_COUNTING_RANGES, PROXY_COUNTING_CARRY)
        if args.proxy
        else (COUNTING_RANGES, COUNTING_CARRY)
    )
    device = resolve_device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {platform.processor() or platform.machine()}"
        f", {torch.get_num_threads()} threads, seeds {seeds}"
        + (
            f", proxy split {args.proxy} (train {PROXIES[args.proxy][0][0]:,}.."
            f"{PROXIES[args.proxy][0][-1]:,}, evaluate"
            f" {numbers[0]:,}..{numbers[-1]:,})"
            if args.proxy
            else ""
        )
        + (f", {len(carry_starts)} carry sessions a seed" if carry_starts else "")
        + (f", overrides {overrides}" if overrides else "")
    )
    head = ("variant", "seed nb", "mean", "min", "sd", "1s mean", "1s min", "after ,", "thous.")
    print(
        f"{head[0]:<12}"
        + "".join(f"{h:>9}" for h in head[1:])
        + f"{'next #':>8}{f'count {args.run}':>10}{'params':>9}{'s/ep':>7}{'s/run':>7}"
    )
    for variant in args.variants:
        recipe = RECIPES[variant].updated(device=args.device, **overrides)
        accs, ones, commas, thousands, spe, runs = [], [], [], [], [], []
        nexts, perfect, carried = [], 0, 0
        counting: list[dict[str, float]] = []
        params = 0
        for seed in seeds:
            start = time.perf_counter()
            result = train(replace(recipe, seed=seed), data, progress=False, log=lambda _: None)
            runs.append(time.perf_counter() - start)
            spe.append(statistics.mean(m["seconds"] for m in result.metrics))
            b = breakdown(result.model, data.vocab, data.ids("valid"))
            accs.append(b.accuracy)
            ones.append(b.one_stream)
            commas.append(b.after_comma)
            thousands.append(b.thousand)
            nexts.append(statistics.mean(counts_on(result.model, data.vocab, next_starts, 4, 1)))
            counted = counts_on(result.model, data.vocab, run_starts, 2, args.run)
            perfect += sum(c == args.run for c in counted)
            crossed = (
                counts_on(result.model, data.vocab, carry_starts, 2, args.run)
                if carry_starts
                else []
            )
            carried += sum(c == args.run for c in crossed)
            counting.append(
                counting_report(
                    result.model,
                    data.vocab,
                    ranges=ranges,
                    carry=carry,
                    also=(NINE_PROXY_CARRY,) if args.proxy == "nine" else (),
                )
                if args.counting
                else {}
            )
            if args.counting and args.show_misses:
                for name, text, said in counting_misses(
                    result.model,
                    data.vocab,
                    words=args.show_words,
                    ranges=ranges,
                    carry=carry,
                    also=(NINE_PROXY_CARRY,) if args.proxy == "nine" else (),
                ):
                    print(f"  seed {seed} misses {name}: {text} -> {' '.join(said)}", flush=True)
            for text in args.show:  # what it answers where it goes wrong
                said = greedy_words(result.model, data.vocab, text, args.show_words)
                print(f"  seed {seed}: {text} -> {' '.join(said)}", flush=True)
            failed_carries = [
                s + 2 + c for s, c in zip(carry_starts, crossed, strict=True) if c < args.run
            ]
            if len(seeds) > 1:
                print(
                    f"  seed {seed}: {b.accuracy:.4f}, one stream {b.one_stream:.4f}"
                    f" ({round((1 - b.one_stream) * (len(data.valid_tokens) - 1))} errors)"
                    f", next number {nexts[-1]:.1%}"
                    f", {sum(c == args.run for c in counted)}/{len(counted)} sessions count"
                    f" {args.run}"
                    + (
                        f", {sum(c == args.run for c in crossed)}/{len(crossed)} carry sessions"
                        f" (first wrong number: {sorted(set(failed_carries))})"
                        if carry_starts
                        else ""
                    )
                    + f", {runs[-1]:.1f} s",
                    flush=True,
                )
            params = count_parameters(result.model)
        nb = f"{SEED_NOTEBOOK[variant]:.3f}" if variant in SEED_NOTEBOOK else "-"
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        figures = (statistics.mean(accs), min(accs), sd, statistics.mean(ones), min(ones))
        if args.counting:
            print(counting_table(variant, seeds, counting), flush=True)
        print(
            f"{variant:<12}{nb:>9}"
            + "".join(f"{v:>9.4f}" for v in figures)
            + f"{statistics.mean(commas):>9.4f}{statistics.mean(thousands):>9.4f}"
            + f"{statistics.mean(nexts):>8.1%}{f'{perfect}/{len(seeds) * len(run_starts)}':>10}"
            + f"{f'{carried}/{len(seeds) * len(carry_starts)}':>8}"
            + f"{params:>9,}{statistics.mean(spe):>7.2f}"
            + f"{statistics.mean(runs):>7.1f}",
            flush=True,
        )


def counting_table(variant: str, seeds: list[int], reports: list[dict[str, float]]) -> str:
    """One line per seed, then the mean and the minimum over seeds, of counting_report (in
    the training report's table)."""
    names = list(reports[0])
    rows = [{"name": f"seed {seed}", "counting": r} for seed, r in zip(seeds, reports, strict=True)]
    rows += [
        {"name": "mean", "counting": {n: statistics.mean(r[n] for r in reports) for n in names}},
        {"name": "min", "counting": {n: min(r[n] for r in reports) for n in names}},
    ]
    return f"{variant} counting\n{format_counting(rows)}"


if __name__ == "__main__":
    main()
