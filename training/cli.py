"""`python -m training {data,train,train-all,report}`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from model_store import VARIANTS, save_checkpoint
from training.data import load_data, write_data
from training.loop import TrainConfig, train
from training.report import collect, format_table, plot

# The three variants of the lesson, trained by `train-all` with the seed recipe.
SEED_VARIANTS = ("gru", "gru-cell", "gru-custom")
DEFAULT_STORE = Path("store")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="write train.txt and valid.txt")
    d.add_argument("--out", type=Path, required=True, help="folder to write them into")

    defaults = TrainConfig()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store folder")
    common.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    common.add_argument("--lr", type=positive_float, default=defaults.lr, help="max learning rate")
    common.add_argument("--bs", type=positive_int, default=defaults.bs, help="batch size")
    common.add_argument("--bptt", type=positive_int, default=defaults.bptt, help="window length")
    common.add_argument("--hidden", type=positive_int, default=defaults.hidden, help="nh")
    common.add_argument("--wd", type=float, default=defaults.wd, help="AdamW weight decay")
    common.add_argument("--seed", type=int, default=defaults.seed)
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    common.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="batches per epoch at most (smoke runs)",
    )
    common.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with real train.txt/valid.txt (generated when absent)",
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("train", parents=[common], help="train one variant")
    t.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    t.add_argument("--name", default=None, help="checkpoint name (default: the variant)")

    sub.add_parser("train-all", parents=[common], help="train the lesson's three variants")

    r = sub.add_parser("report", help="table and accuracy plot of a store's checkpoints")
    r.add_argument("--store", type=Path, default=DEFAULT_STORE)
    r.add_argument("--out", type=Path, default=None, help="PNG path (default: STORE/report.png)")
    return p


def run_training(args: argparse.Namespace, variant: str, name: str) -> None:
    config = TrainConfig(
        variant=variant,
        epochs=args.epochs,
        lr=args.lr,
        bs=args.bs,
        bptt=args.bptt,
        hidden=args.hidden,
        wd=args.wd,
        seed=args.seed,
        device=args.device,
        max_steps=args.max_steps,
    )
    data = load_data(args.data)
    print(
        f"training {variant} -> {args.store}/{name}  (data: {data.source}, "
        f"{len(data.train_tokens):,} train / {len(data.valid_tokens):,} valid tokens)",
        flush=True,
    )
    result = train(
        config, data, progress=not args.no_progress, log=lambda line: print(line, flush=True)
    )
    ref = save_checkpoint(
        args.store,
        name,
        result.model,
        data.vocab,
        metrics=result.metrics,
        extra={
            "recipe": replace(config, device=str(next(result.model.parameters()).device)).to_dict(),
            "data": {
                "source": data.source,
                "fingerprint": data.fingerprint,
                "train_tokens": len(data.train_tokens),
                "valid_tokens": len(data.valid_tokens),
            },
        },
    )
    print(f"wrote {ref.path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data":
            train_path, valid_path = write_data(args.out)
            print(f"wrote {train_path} and {valid_path}")
        elif args.command == "train":
            run_training(args, args.variant, args.name or args.variant)
        elif args.command == "train-all":
            for variant in SEED_VARIANTS:
                run_training(args, variant, variant)
            rows, _ = collect(args.store)
            print(format_table(rows))
        elif args.command == "report":
            rows, problems = collect(args.store)
            if not rows and not problems:
                print(f"no checkpoints in {args.store}", file=sys.stderr)
                return 1
            print(format_table(rows))
            for problem in problems:
                print(f"skipped: {problem}", file=sys.stderr)
            out = plot(rows, args.out or args.store / "report.png")
            print(f"wrote {out}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
