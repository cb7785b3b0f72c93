"""Choosing the next word from a distribution, in plain Python (a row is only 40 numbers)."""

from __future__ import annotations

import math
import random


def sample(
    probs: list[float],
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: random.Random | None = None,
) -> int:
    """Index of a word drawn from `probs` sharpened or flattened by `temperature` (> 0), among
    the `top_k` likeliest words and then the likeliest holding `top_p` of the mass.

    Exact at any temperature: the weights are computed in log space relative to the likeliest
    word ((log p - max log p) / T, then exp), so the likeliest word always weighs 1 and
    nothing underflows to an empty distribution; as T -> 0 this becomes greedy. The likeliest
    word always survives top_k and top_p."""
    assert temperature > 0, "temperature 0 is greedy: use argmax"
    rng = rng or random.Random()
    ranked = sorted(((p, i) for i, p in enumerate(probs) if p > 0), reverse=True)
    if not ranked:  # no possible word at all (cannot happen with a softmax row): greedy
        return max(range(len(probs)), key=probs.__getitem__)
    if top_k is not None:
        ranked = ranked[: max(1, top_k)]
    top = math.log(ranked[0][0])  # (log p - log p_max) / T: subtract first, so never inf - inf
    weights = [math.exp((math.log(p) - top) / temperature) for p, _ in ranked]  # first is 1.0
    if top_p is not None and top_p < 1.0:
        total, mass, keep = math.fsum(weights), 0.0, 0
        while keep < len(weights) and (keep == 0 or mass < top_p * total):
            mass += weights[keep]
            keep += 1
        weights, ranked = weights[:keep], ranked[:keep]
    x = rng.random() * math.fsum(weights)
    for w, (_, i) in zip(weights, ranked, strict=True):
        x -= w
        if x < 0:
            return i
    return ranked[-1][1]  # rounding left a sliver past the last weight


def top_words(probs: list[float], k: int) -> list[tuple[int, float]]:
    """The k most likely (index, prob), most likely first, leaving out impossible words."""
    ranked = sorted(((p, i) for i, p in enumerate(probs) if p > 0), reverse=True)[:k]
    return [(i, p) for p, i in ranked]


def adjusted(
    row: list[float],
    bias: tuple[float, ...] | None,
    counts: dict[int, int],
    presence: float,
    frequency: float,
) -> list[float]:
    """The row with OpenAI's logit bias and penalties applied (in probability space:
    p * exp(bias - count * frequency - presence) for a word generated count > 0 times),
    normalized."""
    add = list(bias) if bias is not None else [0.0] * len(row)
    for word, count in counts.items():
        add[word] -= count * frequency + presence
    out = [p * math.exp(a) if p > 0 else 0.0 for p, a in zip(row, add, strict=True)]
    total = sum(out)
    return [p / total for p in out] if total > 0 else row
