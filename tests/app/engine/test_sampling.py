import math
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


def greedy(row):
    return max(range(len(row)), key=row.__getitem__)


def softmax_rows(n, seed=0):
    """Rows like the engine's: a softmax over 40 logits, some banned (exactly 0)."""
    rng = random.Random(seed)
    for _ in range(n):
        logits = [rng.gauss(0, 4) for _ in range(40)]
        row = [math.exp(v) for v in logits]
        for i in rng.sample(range(40), 10):
            row[i] = 0.0
        total = sum(row)
        yield [p / total for p in row]


@pytest.mark.parametrize("temperature", [1e-6, 1e-3, 1e-300, 5e-324])
@pytest.mark.parametrize("top_p", [None, 0.9, 1e-9, 1.0])
@pytest.mark.parametrize("top_k", [None, 1, 3, 40])
def test_tiny_temperatures_are_greedy(temperature, top_p, top_k):
    rng = random.Random(1)
    for row in softmax_rows(50):
        assert sample(row, temperature, top_k, top_p, rng) == greedy(row)


def test_the_fuzzer_case_samples_instead_of_crashing():
    """p ** (1 / 0.001) underflowed to 0 for every word: top_p kept no word (IndexError,
    which killed the engine), and without top_p the LEAST likely word came out."""
    row = [0.0] * 10 + [0.27, 0.25, 0.2, 0.15, 0.1, 0.03, 7.6e-8]
    for top_p in (None, 0.9):
        assert {sample(row, 0.001, top_p=top_p, rng=random.Random(s)) for s in range(200)} == {10}


def test_ties_at_a_tiny_temperature_share_the_draws():
    row = [0.4, 0.4, 0.2]
    picks = [sample(row, 1e-6, rng=random.Random(s)) for s in range(400)]
    assert set(picks) == {0, 1} and 120 < picks.count(0) < 280


def test_log_space_matches_the_plain_formula_where_it_does_not_underflow():
    """At T = 0.5 both give p^2 / sum p^2: the frequencies agree with the exact ones."""
    freq = draws(n=20000, temperature=0.5)
    exact = [p**2 / sum(q**2 for q in PROBS) for p in PROBS]
    assert freq == pytest.approx(exact, abs=0.015)


@pytest.mark.parametrize(
    ("top_k", "top_p"), [(0, None), (1, None), (None, 1e-300), (1, 1e-300), (100, 0.5)]
)
def test_edge_cases_keep_at_least_the_top_word(top_k, top_p):
    for seed in range(50):
        i = sample(PROBS, 1.0, top_k=top_k, top_p=top_p, rng=random.Random(seed))
        assert i == 1 if top_k != 100 else i in (1, 2)  # top_p 0.5: 0.5 alone is not "< 0.5"


def test_a_row_with_no_possible_word_is_still_answered():
    assert sample([0.0, 0.0, 0.0], 1.0) in (0, 1, 2)
