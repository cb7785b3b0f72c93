"""The training report: a table of every checkpoint in a store and a plot of their accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_store import BadCheckpoint, list_checkpoints, read_meta


def collect(store: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for the latest version of each checkpoint, and a message per unreadable one."""
    rows, problems = [], []
    for ref in list_checkpoints(store):
        try:
            meta = read_meta(ref)
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


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """Validation accuracy per epoch, one line per checkpoint, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
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
