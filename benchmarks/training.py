"""Training benchmark: each variant's recipe (training.loop.RECIPES) over several seeds.

    python -m benchmarks.training --seeds 3 [--variants gru gru-copy]

For each variant: final valid accuracy of the seed's evaluation (64 streams, bptt 40,
stateful; mean, min, sd), one stream over the whole of valid.txt (mean, min), accuracy after a
"," (mean), parameters, seconds per epoch and per whole training run, all from one run on this
machine, next to the seed notebook's figures where it has one.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

from model_store import count_parameters, resolve_device
from training.cli import ALL_VARIANTS
from training.data import load_data
from training.evaluation import breakdown
from training.loop import RECIPES, train

SEED_NOTEBOOK = {"gru": 0.774, "gru-cell": 0.745, "gru-custom": 0.685}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(ALL_VARIANTS))
    p.add_argument("--epochs", type=int, default=None, help="default: each variant's recipe")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    data = load_data()
    device = resolve_device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {platform.processor() or platform.machine()}"
        f", {torch.get_num_threads()} threads, seeds 0-{args.seeds - 1}"
    )
    head = ("variant", "seed nb", "mean", "min", "sd", "1s mean", "1s min", "after ,")
    print(
        f"{head[0]:<12}"
        + "".join(f"{h:>9}" for h in head[1:])
        + f"{'params':>9}{'s/ep':>7}{'s/run':>7}"
    )
    for variant in args.variants:
        recipe = replace(RECIPES[variant], device=args.device)
        if args.epochs is not None:
            recipe = replace(recipe, epochs=args.epochs)
        accs, ones, commas, spe, runs = [], [], [], [], []
        params = 0
        for seed in range(args.seeds):
            start = time.perf_counter()
            result = train(replace(recipe, seed=seed), data, progress=False, log=lambda _: None)
            runs.append(time.perf_counter() - start)
            spe.append(statistics.mean(m["seconds"] for m in result.metrics))
            b = breakdown(result.model, data.vocab, data.ids("valid"))
            accs.append(b.accuracy)
            ones.append(b.one_stream)
            commas.append(b.after_comma)
            params = count_parameters(result.model)
        nb = f"{SEED_NOTEBOOK[variant]:.3f}" if variant in SEED_NOTEBOOK else "-"
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        figures = (statistics.mean(accs), min(accs), sd, statistics.mean(ones), min(ones))
        print(
            f"{variant:<12}{nb:>9}"
            + "".join(f"{v:>9.4f}" for v in figures)
            + f"{statistics.mean(commas):>9.4f}{params:>9,}{statistics.mean(spe):>7.2f}"
            + f"{statistics.mean(runs):>7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
