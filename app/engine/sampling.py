"""Choosing the next word from a distribution: greedy, or sampled with temperature/top-k/top-p."""

from __future__ import annotations

import torch
from torch import Tensor


def choose(
    probs: Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Index of the next word; probs (V,) on the CPU. Temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return int(probs.argmax())
    logits = probs.log() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    p = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(p, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first word always stays)
        drop = (sorted_p.cumsum(0) - sorted_p) >= top_p
        sorted_p[drop] = 0.0
        p = torch.zeros_like(p).scatter_(0, order, sorted_p)
    return int(torch.multinomial(p, 1, generator=generator))


def top_words(probs: Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely (index, prob), most likely first, leaving out impossible words."""
    k = min(k, int((probs > 0).sum()))
    values, indices = torch.topk(probs, k)
    return list(zip(indices.tolist(), values.tolist(), strict=True))
