"""fastai's one-cycle schedule for learning rate and momentum."""

from __future__ import annotations

import math
from dataclasses import dataclass


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Cosine from `start` (pct 0) to `end` (pct 1)."""
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


@dataclass(frozen=True)
class OneCycle:
    lr_max: float
    total_steps: int
    pct_start: float = 0.3  # warm-up share of the steps
    div: float = 25.0  # starting lr = lr_max / div
    final_div: float = 25e4  # final lr = lr_max / final_div (fastai v1: div * 1e4)
    moms: tuple[float, float] = (0.95, 0.85)  # momentum goes 0.95 -> 0.85 -> 0.95

    def __post_init__(self) -> None:
        assert self.total_steps > 0, "one-cycle needs at least one step"

    def at(self, step: int) -> tuple[float, float]:
        """(lr, momentum) for step 0 .. total_steps-1."""
        warm = max(1, round(self.total_steps * self.pct_start))
        if step < warm:
            pct = step / warm
            return (
                cos_anneal(self.lr_max / self.div, self.lr_max, pct),
                cos_anneal(self.moms[0], self.moms[1], pct),
            )
        pct = (step - warm) / max(1, self.total_steps - warm)
        return (
            cos_anneal(self.lr_max, self.lr_max / self.final_div, pct),
            cos_anneal(self.moms[1], self.moms[0], pct),
        )
