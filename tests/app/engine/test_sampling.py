import random

import pytest

from app.engine.sampling import sample, top_words

PROBS = [0.0, 0.5, 0.3, 0.15, 0.05]


def draws(n=4000, **kw):
    rng = random.Random(0)
    counts = [0] * 5
    for _ in range(n):
        counts[sample(PROBS, rng=rng, **kw)] += 1
    return [c / n for c in counts]


def test_temperature_one_follows_the_distribution():
    freq = draws(temperature=1.0)
    assert freq[0] == 0
    assert freq == pytest.approx(PROBS, abs=0.03)


def test_top_k_and_top_p_truncate():
    assert sum(draws(temperature=1.0, top_k=2)[3:]) == 0
    freq = draws(temperature=1.0, top_p=0.7)  # 0.5 + 0.3 reach 0.7: the rest is cut
    assert sum(freq[3:]) == 0 and freq[1] > freq[2] > 0
    assert draws(temperature=1.0, top_p=1e-9)[1] == 1  # the likeliest always stays


def test_temperature_sharpens_or_flattens():
    hot, cold = draws(temperature=5.0), draws(temperature=0.3)
    assert hot[4] > 0.1 > cold[4]
    assert cold[1] > 0.75


def test_seeded_draws_repeat():
    def run(seed):
        rng = random.Random(seed)
        return [sample(PROBS, 1.0, rng=rng) for _ in range(50)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_top_words_skips_impossible_ones():
    assert [i for i, _ in top_words(PROBS, 10)] == [1, 2, 3, 4]
    assert top_words(PROBS, 1) == [(1, 0.5)]
