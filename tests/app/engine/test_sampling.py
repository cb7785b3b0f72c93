import pytest
import torch

from app.engine.sampling import choose, top_words

PROBS = torch.tensor([0.0, 0.5, 0.3, 0.15, 0.05])


def test_greedy():
    assert choose(PROBS, temperature=0) == 1


def draws(n=2000, **kw):
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(n):
        counts[choose(PROBS, generator=g, **kw)] += 1
    return counts / n


def test_temperature_one_follows_the_distribution():
    freq = draws(temperature=1.0)
    assert freq[0] == 0
    torch.testing.assert_close(freq, PROBS, atol=0.04, rtol=0)


def test_top_k_and_top_p_truncate():
    assert draws(temperature=1.0, top_k=2)[3:].sum() == 0
    freq = draws(temperature=1.0, top_p=0.7)  # 0.5 + 0.3 reach 0.7: the rest is cut
    assert freq[3:].sum() == 0 and freq[1] > freq[2] > 0


def test_high_temperature_flattens():
    hot, cold = draws(temperature=5.0), draws(temperature=0.5)
    assert hot[4] > 0.1 > cold[4]


def test_top_words_skips_impossible_ones():
    assert [i for i, _ in top_words(PROBS, 10)] == [1, 2, 3, 4]
    assert top_words(PROBS, 1) == [(1, pytest.approx(0.5))]
