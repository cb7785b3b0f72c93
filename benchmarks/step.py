"""One serving step of each model, in process: `gru` against `gru-copy`, side by side.

    python -m benchmarks.step [--store store] [--rows 64] [--rounds 7] [--before CHECKOUT]

The engine's step for B sessions that each feed one word: `advance_state(x (B, 1), state)`,
`head_state(state)`, a softmax of what it returns. Timed in rounds that alternate the models,
so the load of a shared machine falls on both; prints the median milliseconds a step of each,
their ratio, and the largest difference in probability between the step's output and the
training forward's (the serving path must compute the same function). `--with-state` also
times the state's gather from and scatter into a pool of 4,096 sequences, as the engine does
around a step.
Models come from `--store` when given (the latest checkpoint of each), else are built
untrained from their recipes (the cost of a step does not depend on the weights).
`--before CHECKOUT` (e.g. `git worktree add /tmp/step-before HEAD~2`) times that checkout's
models beside this tree's, in one run: each tree's steps run in a process of its own
(`--worker`, with PYTHONPATH on that tree), and the rounds alternate the trees and the models,
so each median sees the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from model_store import (
    HumanNumbersLM,
    build_model,
    list_checkpoints,
    load_checkpoint,
)
from training.loop import RECIPES

MODELS = ("gru", "gru-copy")
POOL = 4096  # sequences in the state pool of --with-state


def load(name: str, store: Path | None) -> HumanNumbersLM:
    if store is not None:
        refs = [r for r in list_checkpoints(store) if r.name == name]
        if not refs:
            raise SystemExit(f"no checkpoint {name!r} in {store}")
        return load_checkpoint(refs[-1]).model.eval()
    config = RECIPES[name].model
    return build_model(config).eval()


def stepper(
    model: HumanNumbersLM, rows: int, with_state: bool, device: torch.device | None = None
) -> tuple[Callable[[], Tensor], float]:
    """A step of `rows` sessions with a history (it returns their next-word probabilities),
    and the largest |difference| between those and the training forward's over the same text;
    its inputs and state on `device` (the model's: the CPU unless given)."""
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    text = torch.randint(0, vocab, (rows, 31)).to(device)
    with torch.inference_mode():
        whole, _ = model(text)
        _, state = model(text[:, :-1])
        x = text[:, -1:]
        logits = model.head_state(model.advance_state(x, state, None))
        ref = torch.softmax(whole[:, -1], -1)  # what the engine makes of either
        diff = float((torch.softmax(logits, -1) - ref).abs().max())
        pool = {n: p.new_zeros(POOL, *p.shape[1:]) for n, p in state.items()}
        slots = torch.randperm(POOL)[:rows].to(device)

    def step() -> Tensor:
        s = {n: p.index_select(0, slots) for n, p in pool.items()} if with_state else state
        new = model.advance_state(x, s, None)
        probs = torch.softmax(model.head_state(new).float(), dim=-1)
        if with_state:
            for n, p in pool.items():
                p.index_copy_(0, slots, new[n])
        return probs

    return step, diff


def ms_per_step(step: Callable[[], object], repeat: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(repeat):
            step()
        return (time.perf_counter() - start) / repeat * 1e3


def prepare(args: argparse.Namespace) -> tuple[dict[str, Callable[[], Tensor]], dict[str, float]]:
    torch.set_num_threads(args.threads)
    steps, diffs = {}, {}
    for name in MODELS:
        steps[name], diffs[name] = stepper(load(name, args.store), args.rows, args.with_state)
        ms_per_step(steps[name], 50)  # warm up
    return steps, diffs


def worker(args: argparse.Namespace) -> None:
    """Time a round of the model named on each line of stdin; answer on stdout."""
    steps, diffs = prepare(args)
    print(json.dumps(diffs), flush=True)
    for line in sys.stdin:
        print(json.dumps(ms_per_step(steps[line.strip()], args.repeat)), flush=True)


class Tree:
    """A checkout's models in a worker process of their own."""

    def __init__(self, root: Path, argv: list[str]):
        env = {**os.environ, "PYTHONPATH": str(root)}
        # This file, run with the checkout's packages first on the path (not this file's folder).
        run = f"import runpy, sys; sys.argv[1:] = {['--worker', *argv]!r}; "
        run += f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
        cmd = [sys.executable, "-c", run]
        self.proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.diffs: dict[str, float] = json.loads(self.ask(None))

    def ask(self, name: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if name is not None:
            self.proc.stdin.write(name + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker of {self.proc.args} ended")
        return line

    def round(self, name: str) -> float:
        return float(json.loads(self.ask(name)))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat", type=int, default=300, help="steps a round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--with-state", action="store_true")
    p.add_argument("--before", type=Path, default=None, help="another checkout, timed beside")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    argv = [f"--rows={args.rows}", f"--repeat={args.repeat}", f"--threads={args.threads}"]
    argv += [f"--store={args.store.resolve()}"] if args.store else []
    argv += ["--with-state"] if args.with_state else []
    here = Path(__file__).resolve().parents[1]
    trees = {"before": Tree(args.before.resolve(), argv)} if args.before else {}
    trees["this"] = Tree(here, argv)
    times: dict[tuple[str, str], list[float]] = {(t, m): [] for t in trees for m in MODELS}
    for _ in range(args.rounds):
        for tree_name, tree in trees.items():
            for name in MODELS:
                times[tree_name, name].append(tree.round(name))
    for tree in trees.values():
        tree.close()
    med = {key: statistics.median(t) for key, t in times.items()}
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rows} rows x 1 token"
        + (", state gathered/scattered" if args.with_state else "")
        + f", median of {args.rounds} rounds of {args.repeat} steps"
        + (f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    )
    print(f"{'tree':<8}{'model':<10}{'ms/step':>9}{'min':>8}{'max':>8}{'max |dp|':>12}")
    for (tree_name, name), t in times.items():
        dp = trees[tree_name].diffs[name]
        print(
            f"{tree_name:<8}{name:<10}{med[tree_name, name]:>9.3f}{min(t):>8.3f}{max(t):>8.3f}"
            f"{dp:>12.1e}"
        )
    for tree_name in trees:
        ratio = med[tree_name, "gru-copy"] / med[tree_name, "gru"]
        print(f"{tree_name}: gru-copy / gru: {ratio:.2f}x the time a step")
    if args.before:
        for name in MODELS:
            change = med["this", name] / med["before", name]
            print(f"{name}: this tree / before: {change:.2f}x the time a step")


if __name__ == "__main__":
    main()
