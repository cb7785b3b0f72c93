"""Where a model is right and wrong on the validation stream: overall, after a ",", on
"thousand", and by the position of the predicted word within its number."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from model_store import HumanNumbersLM, State, Vocab
from training.batches import LMBatches
from training.data import number_words

MAX_POSITION = 6  # a number has at most 6 words (positions 0-5), then its "," (6)


@torch.no_grad()
def predictions(model: HumanNumbersLM, ids: list[int], bs: int, bptt: int) -> tuple[Tensor, ...]:
    """Greedy prediction, target and input at every position of the stream read as `bs` rows
    of `bptt`-token windows, the state carried (the seed's evaluation): three (N,) tensors."""
    model.eval()
    device = next(model.parameters()).device
    state: State | None = None
    preds, targets, inputs = [], [], []
    for x, y in LMBatches(ids, bs, bptt, device):
        logits, state = model(x, state)
        preds.append(logits.argmax(-1).flatten())
        targets.append(y.flatten())
        inputs.append(x.flatten())
    return torch.cat(preds).cpu(), torch.cat(targets).cpu(), torch.cat(inputs).cpu()


def positions_in_number(targets: Tensor, comma: int) -> Tensor:
    """For each target, its position within its number: 0 for a number's first word, ..., and
    the "," after it counts as one more position. Computed along the stream the targets came
    from, so pass the targets of one stream in order."""
    pos = torch.zeros_like(targets)
    p = 0
    for i, t in enumerate(targets.tolist()):
        pos[i] = min(p, MAX_POSITION)
        p = 0 if t == comma else p + 1
    return pos


@dataclass
class Breakdown:
    accuracy: float  # 64 streams, bptt 40, stateful: the seed's evaluation
    after_comma: float  # the first word of a number, predicted at its ","
    thousand: float  # targets that are "thousand"
    one_stream: float  # the whole valid stream read as one
    by_position: list[float]  # one stream, by position of the target within its number


def _mean(mask: Tensor, right: Tensor) -> float:
    return float(right[mask].float().mean()) if bool(mask.any()) else float("nan")


def breakdown(model: HumanNumbersLM, vocab: Vocab, ids: list[int]) -> Breakdown:
    comma, thousand = vocab.stoi[","], vocab.stoi["thousand"]
    pred, target, inp = predictions(model, ids, bs=64, bptt=40)
    right = pred == target
    pred1, target1, _ = predictions(model, ids, bs=1, bptt=40)
    right1 = pred1 == target1
    pos = positions_in_number(target1, comma)
    return Breakdown(
        accuracy=float(right.float().mean()),
        after_comma=_mean(inp == comma, right),
        thousand=_mean(target == thousand, right),
        one_stream=float(right1.float().mean()),
        by_position=[_mean(pos == p, right1) for p in range(MAX_POSITION + 1)],
    )


def number_text(numbers: range) -> str:
    """Numbers as a user types them to the service: each followed by ", "."""
    return "".join(f"{number_words(n)}, " for n in numbers)


@torch.no_grad()
def counts_on(
    model: HumanNumbersLM,
    vocab: Vocab,
    starts: list[int],
    fed: int | list[int],
    run: int,
    bos: bool = True,
) -> list[int]:
    """The service's counting check, in process: a session fed the numbers s .. s+fed-1
    (from the zero state) continues greedily, one number after another; how many of the next
    `run` numbers it gets right in a row, for each start s.

    Greedy generation equals the true stream up to its first mistake, so one teacher-forced
    forward over prompt + true continuation finds that mistake: no step-by-step decoding.
    Only words are chosen (never xxbos nor another special token), as in the engine.
    `fed` may differ by start (a list, one per start); `bos` puts `xxbos` before each prompt,
    as the service starts every text (model_store.start_state); False reads from the zero state.
    """
    model.eval()
    device = next(model.parameters()).device
    comma = vocab.stoi[","]
    banned = torch.tensor(vocab.unpredictable, dtype=torch.long)
    feds = fed if isinstance(fed, list) else [fed] * len(starts)
    head = "xxbos " if bos else ""
    pairs = list(zip(starts, feds, strict=True))
    prompts = [vocab.encode(head + number_text(range(s, s + f))) for s, f in pairs]
    truths = [vocab.encode(number_text(range(s + f, s + f + run))) for s, f in pairs]
    width = max(len(p) + len(t) for p, t in zip(prompts, truths, strict=True))
    x = torch.zeros(len(starts), width, dtype=torch.long)
    for i, (p, t) in enumerate(zip(prompts, truths, strict=True)):
        x[i, : len(p) + len(t)] = torch.tensor(p + t)  # right padding: causal, so harmless
    logits, _ = model(x.to(device))
    logits[..., banned.to(device)] = float("-inf")
    pred = logits.argmax(-1).cpu()
    right = []
    for i, (p, t) in enumerate(zip(prompts, truths, strict=True)):
        guess = pred[i, len(p) - 1 : len(p) - 1 + len(t)]  # position j predicts x[j + 1]
        wrong = (guess != torch.tensor(t)).nonzero()
        end = int(wrong[0]) if len(wrong) else len(t)
        right.append(t[:end].count(comma))  # numbers finished (their "," right) before it
    return right


@torch.no_grad()
def greedy_words(model: HumanNumbersLM, vocab: Vocab, text: str, n: int) -> list[str]:
    """The `n` words a greedy continuation of `text` gives (read after xxbos, as the service
    reads a text; words only): what a model answers where it goes wrong."""
    model.eval()
    device = next(model.parameters()).device
    ids = vocab.encode("xxbos " + text)
    banned = torch.tensor(vocab.unpredictable, dtype=torch.long, device=device)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids], device=device))
        last = logits[0, -1]
        last[banned] = float("-inf")
        ids.append(int(last.argmax()))
    return [vocab.itos[i] for i in ids[-n:]]


# The ranges a user counts in, as (name, first, last): the next number must be exactly right
# after four consecutive numbers of the range. train.txt holds 1..7,999 (1..99 only once, right
# after its xxbos), valid.txt 8,001..9,999; nothing holds five-digit numbers. Then the carry
# 9,999 -> 10,000 into a count unit never seen as one ("ten thousand").
COUNTING_RANGES = (
    ("1..99", 1, 99),
    ("100..999", 100, 999),
    ("1,000..7,999", 1000, 7999),
    ("8,000..9,999", 8000, 9999),
    ("10,000..99,999", 10_000, 99_999),
)
COUNTING_CARRY = 10_000
# The same on `--proxy carry` (train 1..5,999): the carry 5,999 -> 6,000 into a thousands word
# never seen as one stands in for 9,999 -> 10,000 when choosing a recipe.
PROXY_COUNTING_RANGES = (
    ("1..99", 1, 99),
    ("100..999", 100, 999),
    ("1,000..5,999", 1000, 5999),
    ("6,000..7,999", 6000, 7999),
)
PROXY_COUNTING_CARRY = 6000
# On `--proxy nine` (train 11..5,999) also the carry 9 -> 10, whose offered word "nine" answers
# "one" at train.txt's 999 -> one thousand, as at 9,999 -> ten thousand.
NINE_PROXY_CARRY = 10


def crossing_trials(carry: int = COUNTING_CARRY) -> list[tuple[int, int]]:
    """(start, fed) prompts that cross carry - 1 -> carry: 1 to 8 consecutive numbers ending at
    carry - 1, carry or carry + 1, starting at carry - 1 or before (21 prompts)."""
    return [
        (end - fed + 1, fed)
        for end in (carry - 1, carry, carry + 1)
        for fed in range(1, 9)
        if end - fed + 1 < carry
    ]


def crossing_name(carry: int) -> str:
    return f"{carry - 1:,} -> {carry:,}"


def counting_prompts(
    trials: int = 60,
    seed: int = 0,
    ranges: tuple[tuple[str, int, int], ...] = COUNTING_RANGES,
    carry: int = COUNTING_CARRY,
    also: tuple[int, ...] = (),
) -> dict[str, list[tuple[int, int]]]:
    """counting_report's next-number prompts as (start, numbers fed), by the name of the rate
    they make: `trials` random starts of four numbers in each of `ranges` (drawn in order from
    Random(seed)), then the crossings of `carry` and of each of `also` (those from 1 on)."""
    rng = random.Random(seed)
    prompts = {
        name: [(rng.randint(lo, hi - 4), 4) for _ in range(trials)] for name, lo, hi in ranges
    }
    prompts[crossing_name(carry)] = crossing_trials(carry)
    for more in also:
        prompts[crossing_name(more)] = [(s, f) for s, f in crossing_trials(more) if s >= 1]
    return prompts


def counting_report(
    model: HumanNumbersLM,
    vocab: Vocab,
    trials: int = 60,
    seed: int = 0,
    bos: bool = True,
    ranges: tuple[tuple[str, int, int], ...] = COUNTING_RANGES,
    carry: int = COUNTING_CARRY,
    also: tuple[int, ...] = (),
) -> dict[str, float]:
    """The next-number rate of each of `ranges` (`trials` random starts each, four numbers
    fed), across `carry` - 1 -> `carry` (crossing_trials), and two sessions counting on alone:
    from `one,` for 120 numbers (across 99 -> 100) and from `carry - 10` for 30 (across the
    carry); for those two, the numbers right in a row. `bos` puts xxbos before every prompt, as
    the service reads a text; False measures from the bare zero state. `also`: more carries
    whose crossing is measured (their crossing_trials, those starting at 1 or later)."""
    out: dict[str, float] = {}
    for name, prompts in counting_prompts(trials, seed, ranges, carry, also).items():
        starts, feds = [s for s, _ in prompts], [f for _, f in prompts]
        right = counts_on(model, vocab, starts, fed=feds, run=1, bos=bos)
        out[name] = sum(right) / len(right)
    for name, start, run in counting_sessions(carry):
        out[name] = counts_on(model, vocab, [start], fed=1, run=run, bos=bos)[0]
    return out


def counting_sessions(carry: int = COUNTING_CARRY) -> list[tuple[str, int, int]]:
    """counting_report's sessions counting on alone, as (name, the number fed, numbers to get
    right): from one for 120, from `carry` - 10 for 30."""
    return [("from 1 (of 120)", 1, 120), (f"from {carry - 10:,} (of 30)", carry - 10, 30)]


def counting_misses(
    model: HumanNumbersLM,
    vocab: Vocab,
    words: int = 6,
    trials: int = 60,
    seed: int = 0,
    ranges: tuple[tuple[str, int, int], ...] = COUNTING_RANGES,
    carry: int = COUNTING_CARRY,
    also: tuple[int, ...] = (),
) -> list[tuple[str, str, list[str]]]:
    """What a model answers where counting_report counts it wrong (read after xxbos, as the
    service reads a text): for each next-number prompt it misses, and for each session up to
    its first wrong number, the rate's name, the text read and the greedy `words` after it."""
    misses = []
    for name, prompts in counting_prompts(trials, seed, ranges, carry, also).items():
        starts, feds = [s for s, _ in prompts], [f for _, f in prompts]
        right = counts_on(model, vocab, starts, fed=feds, run=1)
        for (start, fed), r in zip(prompts, right, strict=True):
            if not r:
                text = number_text(range(start, start + fed)).strip()
                misses.append((name, text, greedy_words(model, vocab, text, words)))
    for name, start, run in counting_sessions(carry):
        counted = counts_on(model, vocab, [start], fed=1, run=run)[0]
        if counted < run:  # greedy equals the truth up to its first mistake: the text it read
            text = number_text(range(start, start + 1 + counted)).strip()
            misses.append((name, text, greedy_words(model, vocab, text, words)))
    return misses
