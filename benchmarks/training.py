"""Training benchmark: the seed recipe for each variant over several seeds.

    python -m benchmarks.training --seeds 5

Prints final valid accuracy (mean, min, max) and seconds per epoch for each variant, next to
the seed notebook's figures, all from one run on this machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from model_store import resolve_device
from training.cli import SEED_VARIANTS
from training.data import load_data
from training.loop import TrainConfig, train

SEED_NOTEBOOK = {"gru": 0.774, "gru-cell": 0.745, "gru-custom": 0.685}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    data = load_data()
    device = resolve_device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {platform.processor() or platform.machine()}"
        f", {torch.get_num_threads()} threads"
    )
    print(f"{'variant':<12}{'seed nb':>9}{'mean':>8}{'min':>8}{'max':>8}{'s/epoch':>9}")
    for variant in SEED_VARIANTS:
        accs, spe = [], []
        for seed in range(args.seeds):
            config = TrainConfig(variant=variant, epochs=args.epochs, seed=seed, device=args.device)
            metrics = train(config, data, progress=False, log=lambda _: None).metrics
            accs.append(metrics[-1]["accuracy"])
            spe.append(statistics.mean(m["seconds"] for m in metrics))
        print(
            f"{variant:<12}{SEED_NOTEBOOK[variant]:>9.3f}{statistics.mean(accs):>8.3f}"
            f"{min(accs):>8.3f}{max(accs):>8.3f}{statistics.mean(spe):>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
