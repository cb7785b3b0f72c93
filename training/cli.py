"""`python -m training {data,train,train-all,report}`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from model_store import VARIANTS, list_checkpoints, save_checkpoint
from training.data import load_data, write_data
from training.loop import MODEL_FIELDS, RECIPES, TrainConfig, train
from training.report import collect, format_counting, format_table, plot

DEFAULT_STORE = Path("store")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
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

    # Flags left out take the variant's recipe (training.loop.RECIPES).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store folder")
    common.add_argument("--epochs", type=positive_int)
    common.add_argument("--lr", type=positive_float, help="max learning rate")
    common.add_argument("--bs", type=positive_int, help="batch size")
    common.add_argument("--bptt", type=positive_int, help="window length")
    common.add_argument("--hidden", type=positive_int, help="nh")
    common.add_argument("--layers", type=positive_int, dest="n_layers", help="GRU layers")
    common.add_argument("--copy-window", type=positive_int, help="gru-copy: K positions")
    common.add_argument("--key-size", type=positive_int, help="gru-copy: key size D")
    for flag, what in (
        ("--copy-value", "gru-copy: the head reads the offered word's embedding"),
        ("--copy-start", "gru-copy: the first word fed to the zero state can be copied"),
        ("--copy-lookahead", "gru-copy: the head reads the word after the offered one"),
        ("--restart-numbers", "restarted rows jump to a random number's first word"),
        ("--restart-bos", "restarted rows read xxbos first"),
    ):
        common.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=what)
    common.add_argument("--wd", type=float, help="AdamW weight decay")
    common.add_argument(
        "--reset", type=share, help="share of rows whose state is zeroed before a window"
    )
    common.add_argument(
        "--restart-begin",
        type=share,
        help="share of restarted rows that jump to one of the data's first 99 numbers",
    )
    common.add_argument(
        "--restart-carry",
        type=share,
        help="share of restarted rows that jump to a few numbers before a thousands carry",
    )
    common.add_argument("--seed", type=int)
    common.add_argument("--device", choices=("auto", "cpu", "cuda"))
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
    common.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is faster on a CPU other jobs share",
    )

    t = sub.add_parser("train", parents=[common], help="train one variant")
    t.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    t.add_argument("--name", default=None, help="checkpoint name (default: the variant)")

    a = sub.add_parser(
        "train-all", parents=[common], help=f"train every variant: {', '.join(VARIANTS)}"
    )
    a.add_argument(
        "--missing",
        action="store_true",
        help="only the variants with no checkpoint in the store (what `make run` does: a first "
        "run stopped while training finishes on the next)",
    )

    r = sub.add_parser("report", help="table and accuracy plot of a store's checkpoints")
    r.add_argument("--store", type=Path, default=DEFAULT_STORE)
    r.add_argument("--out", type=Path, default=None, help="PNG path (default: STORE/report.png)")
    r.add_argument(
        "--data",
        type=Path,
        default=None,
        help="real train.txt/valid.txt to evaluate on",
    )
    return p


def recipe_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields given on the command line (a flag's dest is its field's name)."""
    names = [n for n in MODEL_FIELDS if n != "variant"]
    names += [f.name for f in fields(TrainConfig) if f.name != "model"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run_training(args: argparse.Namespace, variant: str, name: str) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = RECIPES[variant].updated(**recipe_flags(args))
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
            have = {ref.name for ref in list_checkpoints(args.store)} if args.missing else set()
            todo = [variant for variant in VARIANTS if variant not in have]
            if not todo:
                print(f"every variant has a checkpoint in {args.store}: nothing to train")
                return 0
            if present := [variant for variant in VARIANTS if variant in have]:
                print(f"in {args.store} already, not trained again: {', '.join(present)}")
            for variant in todo:
                run_training(args, variant, variant)
            rows, _ = collect(args.store, load_data(args.data))
            print(format_table(rows))
            print(format_counting(rows))
        elif args.command == "report":
            rows, problems = collect(args.store, load_data(args.data))
            if not rows and not problems:
                print(f"no checkpoints in {args.store}", file=sys.stderr)
                return 1
            print(format_table(rows))
            print(format_counting(rows))
            for problem in problems:
                print(f"skipped: {problem}", file=sys.stderr)
            out = plot(rows, args.out or args.store / "report.png")
            print(f"wrote {out}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
