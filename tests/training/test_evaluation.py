"""The in-process counting check finds a session's first mistake, as the service would."""

import torch

from model_store import ModelConfig
from model_store.models import HumanNumbersLM
from training.data import number_words
from training.evaluation import counts_on


class Peeker(HumanNumbersLM):
    """Ranks first the id that follows each position of its input (it reads ahead: an oracle
    under teacher forcing), except where that id is `wrong_at`: there `instead` comes first
    and the true id second."""

    def __init__(self, vocab_size: int, wrong_at: int, instead: int):
        super().__init__(ModelConfig(vocab_size=vocab_size))
        self.wrong_at, self.instead = wrong_at, instead

    def forward(self, x, state=None):
        truth = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # the last position predicts nothing
        wrong = torch.where(truth == self.wrong_at, self.instead, truth)
        one_hot = torch.nn.functional.one_hot
        v = self.config.vocab_size
        return one_hot(truth, v).float() + 2 * one_hot(wrong, v).float(), {}

    def advance_state(self, x, state, lengths=None):
        return state  # it reads its input, it keeps no state


def test_counts_on_stops_at_the_first_wrong_number(data):
    v = data.vocab
    model = Peeker(len(v), wrong_at=v.stoi["hundred"], instead=v.stoi["thousand"])
    starts = [8001, 8095, 8097, 8098, 8099, 9997]
    # fed 2 numbers, then 3 to get right: a number with "hundred" in it is the first mistake
    got = counts_on(model, v, [s for s in starts if s + 4 <= 9999], fed=2, run=3)
    want = []
    for s in [s for s in starts if s + 4 <= 9999]:
        nexts = [number_words(n) for n in range(s + 2, s + 5)]
        want.append(next((i for i, w in enumerate(nexts) if "hundred" in w), 3))
    assert got == want and want == [3, 3, 1, 0, 0]  # 8,100 is the first number with "hundred"


def test_counts_on_never_chooses_a_special_token(data):
    """The engine never generates a word a user may not type: neither does the check."""
    v = data.vocab
    model = Peeker(len(v), wrong_at=v.stoi["hundred"], instead=v.stoi["xxpad"])
    # xxpad ranks first where "hundred" is next, the truth second: banned, so all right
    assert counts_on(model, v, [8097, 8098], fed=2, run=4) == [4, 4]
    model.instead = v.stoi["xxbos"]  # typed, never predicted (the engine's rule): banned too
    assert counts_on(model, v, [8097, 8098], fed=2, run=4) == [4, 4]
    model.instead = v.stoi["thousand"]  # a word a user may type: a mistake
    assert counts_on(model, v, [8097, 8098], fed=2, run=4) == [1, 0]


def test_counting_report_adds_the_crossings_asked_for(data):
    """`also` adds a carry's crossing (crossing_trials: 21 prompts of 1 to 8 numbers ending at
    9, 10 or 11 for the carry 9 -> 10): where "ten" is always wrong, the 8 prompts ending at 9
    fail and the 13 others do not; the session from one stops at 10."""
    from training.evaluation import PROXY_COUNTING_CARRY, PROXY_COUNTING_RANGES, counting_report

    v = data.vocab
    model = Peeker(len(v), wrong_at=v.stoi["ten"], instead=v.stoi["nine"])
    got = counting_report(
        model, v, ranges=PROXY_COUNTING_RANGES, carry=PROXY_COUNTING_CARRY, also=(10,)
    )
    assert got["9 -> 10"] == 13 / 21
    assert got["5,999 -> 6,000"] == 1.0
    assert got["from 5,990 (of 30)"] == 19  # 5,991 .. 6,009 right, then "six thousand ten"
    assert got["from 1 (of 120)"] == 8  # two .. nine right, then "ten"
    assert "9 -> 10" not in counting_report(model, v, ranges=PROXY_COUNTING_RANGES, carry=6000)


def test_greedy_words_generates_words_only(data):
    """The greedy continuation of a text, as the engine would give it: never a special token
    (the Peeker repeats the last token read, ",", but ranks xxbos above it: banned)."""
    from training.evaluation import greedy_words

    v = data.vocab
    model = Peeker(len(v), wrong_at=v.stoi[","], instead=v.stoi["xxbos"])
    assert greedy_words(model, v, "one, two,", 3) == [",", ",", ","]
    model.instead = v.stoi["five"]  # a word: chosen
    assert greedy_words(model, v, "one, two,", 2) == ["five", "five"]


def test_counting_misses_are_the_prompts_the_report_counts_wrong(data):
    """counting_misses lists exactly the prompts counting_report counts wrong (as many for
    each rate as its rate misses), each with the model's greedy words after it; a session
    appears with the text it read up to its first wrong number."""
    from training.evaluation import (
        PROXY_COUNTING_CARRY,
        PROXY_COUNTING_RANGES,
        counting_misses,
        counting_prompts,
        counting_report,
    )

    v = data.vocab
    model = Peeker(len(v), wrong_at=v.stoi["ten"], instead=v.stoi["nine"])
    asked = dict(ranges=PROXY_COUNTING_RANGES, carry=PROXY_COUNTING_CARRY, also=(10,))
    report = counting_report(model, v, **asked)
    misses = counting_misses(model, v, words=2, **asked)
    prompts = counting_prompts(**asked)
    for name, some in prompts.items():
        missed = [text for n, text, _ in misses if n == name]
        assert len(missed) == round((1 - report[name]) * len(some)), name
    nine = [text for n, text, _ in misses if n == "9 -> 10"]
    assert len(nine) == 8 and all(text.endswith("nine,") for text in nine)
    assert nine[0] == "nine," and nine[-1] == "two, three, four, five, six, seven, eight, nine,"
    # a range's misses: the prompts whose next number holds "ten", as its four numbers' text
    from training.evaluation import greedy_words, number_text

    for name, _, _ in PROXY_COUNTING_RANGES:
        want = [
            number_text(range(s, s + f)).strip()
            for s, f in prompts[name]
            if "ten" in number_words(s + f).split()
        ]
        assert [text for n, text, _ in misses if n == name] == want, name
    sessions = {n: text for n, text, _ in misses if n.startswith("from")}
    assert sessions["from 1 (of 120)"] == "one, two, three, four, five, six, seven, eight, nine,"
    assert sessions["from 5,990 (of 30)"].endswith("six thousand nine,")  # then 6,010
    for _, text, said in misses[:3] + misses[-2:]:  # the model's own words after the text
        assert said == greedy_words(model, v, text, 2)
