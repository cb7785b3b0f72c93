"""Choosing the next word from a distribution, in plain Python (a row is only 40 numbers)."""

from __future__ import annotations

import random


def sample(
    probs: list[float],
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: random.Random | None = None,
) -> int:
    """Index of a word drawn from `probs` sharpened or flattened by `temperature` (> 0), among
    the `top_k` likeliest words and then the likeliest holding `top_p` of the mass."""
    assert temperature > 0, "temperature 0 is greedy: use argmax"
    rng = rng or random.Random()
    ranked = sorted(((p, i) for i, p in enumerate(probs) if p > 0), reverse=True)
    if top_k is not None:
        ranked = ranked[:top_k]
    weights = [p ** (1.0 / temperature) for p, _ in ranked]
    if top_p is not None and top_p < 1.0:
        total, mass, keep = sum(weights), 0.0, 0
        while keep < len(weights) and mass < top_p * total:  # the likeliest always stays
            mass += weights[keep]
            keep += 1
        weights, ranked = weights[:keep], ranked[:keep]
    x = rng.random() * sum(weights)
    for w, (_, i) in zip(weights, ranked, strict=True):
        x -= w
        if x < 0:
            return i
    return ranked[-1][1]


def top_words(probs: list[float], k: int) -> list[tuple[int, float]]:
    """The k most likely (index, prob), most likely first, leaving out impossible words."""
    ranked = sorted(((p, i) for i, p in enumerate(probs) if p > 0), reverse=True)[:k]
    return [(i, p) for p, i in ranked]
