"""The training report: a table of every checkpoint in a store and a plot of their accuracy.

Given the data, each checkpoint is also evaluated on the validation stream: accuracy after a
"," (the first word of a number: the seed models cannot produce a thousands word they never
saw as one), on "thousand", over one stream of the whole of valid.txt, and by position within
a number."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from model_store import BadCheckpoint, list_checkpoints, load_checkpoint, read_meta
from training.data import HumanNumbers
from training.evaluation import MAX_POSITION, breakdown, counting_report


def collect(
    store: Path, data: HumanNumbers | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for the latest version of each checkpoint, and a message per unreadable one; with
    `data`, each row also holds its model's breakdown on the validation stream."""
    rows, problems = [], []
    for ref in list_checkpoints(store):
        try:
            meta = read_meta(ref)
            evaluated: dict[str, Any] = {}
            if data is not None:
                ckpt = load_checkpoint(ref)
                evaluated = asdict(breakdown(ckpt.model, data.vocab, data.ids("valid")))
                evaluated["counting"] = counting_report(ckpt.model, data.vocab)
        except BadCheckpoint as e:
            problems.append(str(e))
            continue
        metrics = meta["metrics"]
        rows.append(
            {
                "name": ref.name,
                "version": ref.version,
                "variant": meta["variant"],
                "parameters": meta.get("parameters"),
                "epochs": len(metrics),
                "accuracy": metrics[-1]["accuracy"] if metrics else None,
                "seconds_per_epoch": (
                    sum(m["seconds"] for m in metrics) / len(metrics) if metrics else None
                ),
                "curve": [(m["epoch"], m["accuracy"]) for m in metrics],
                "after_comma": evaluated.get("after_comma"),
                "thousand": evaluated.get("thousand"),
                "one_stream": evaluated.get("one_stream"),
                "by_position": evaluated.get("by_position"),
                "counting": evaluated.get("counting"),
            }
        )
    return rows, problems


# (header, width, format of a row's value); numbers right-aligned, names left.
COLUMNS = (
    ("name", -16, "{name}"),
    ("variant", -12, "{variant}"),
    ("version", 8, "{version}"),
    ("params", 9, "{parameters:,}"),
    ("epochs", 8, "{epochs}"),
    ("accuracy", 10, "{accuracy:.4f}"),
    ("s/epoch", 9, "{seconds_per_epoch:.2f}"),
    ("after ,", 9, "{after_comma:.4f}"),
    ("thousand", 10, "{thousand:.4f}"),
    ("1 stream", 10, "{one_stream:.4f}"),
)


def _cell(text: str, width: int) -> str:
    return text.ljust(-width) if width < 0 else text.rjust(width)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["".join(_cell(h, w) for h, w, _ in COLUMNS)]
    for r in rows:
        cells = []
        for _, width, fmt in COLUMNS:
            try:
                text = fmt.format(**r)
            except (TypeError, ValueError):  # a value that is None: the checkpoint lacks it
                text = "-"
            cells.append(_cell(text, width))
        lines.append("".join(cells))
    return "\n".join(lines)


def format_counting(rows: list[dict[str, Any]]) -> str:
    """Counting from anywhere (training.evaluation.counting_report), a line per evaluated
    checkpoint: the next number's rate by range and across 9,999 -> 10,000, then how many
    numbers a session counts on alone from one (of 120) and from 9,990 (of 30)."""
    evaluated = [r for r in rows if r.get("counting")]
    if not evaluated:
        return ""
    names = list(evaluated[0]["counting"])
    widths = [max(len(n), 6) + 2 for n in names]
    lines = [
        "next number right".ljust(20)
        + "".join(_cell(n, w) for n, w in zip(names, widths, strict=True))
    ]
    for r in evaluated:
        cells = [
            _cell(
                f"{r['counting'][n]:.0f}" if n.startswith("from") else f"{r['counting'][n]:.3f}", w
            )
            for n, w in zip(names, widths, strict=True)
        ]
        lines.append(_cell(r["name"], -20) + "".join(cells))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """Validation accuracy per epoch, one line per checkpoint, and (for evaluated rows) the
    accuracy by position within a number, one bar per checkpoint, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in rows if r.get("by_position")]
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(13 if evaluated else 7, 4.5))
    ax = axes[0] if evaluated else axes
    if evaluated:
        plot_positions(axes[1], evaluated)
    for r in rows:
        if r["curve"]:
            epochs, acc = zip(*r["curve"], strict=True)
            label = r["name"] if r["name"] == r["variant"] else f"{r['name']} ({r['variant']})"
            ax.plot(epochs, acc, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid accuracy")
    ax.set_title("Human Numbers: validation accuracy by epoch")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_positions(ax: Any, rows: list[dict[str, Any]]) -> None:
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [p + (i - (len(rows) - 1) / 2) * width for p in range(MAX_POSITION + 1)]
        ax.bar(xs, r["by_position"], width=width, label=r["name"])
    ax.set_xticks(range(MAX_POSITION + 1))
    ax.set_xticklabels([f"{p + 1}" for p in range(MAX_POSITION + 1)])
    ax.set_xlabel('position of the predicted word within its number (1: first word; "," last)')
    ax.set_ylabel("accuracy, one stream over valid.txt")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy by position within a number")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
