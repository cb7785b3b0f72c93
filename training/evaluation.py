"""Where a model is right and wrong on the validation stream: overall, after a ",", on
"thousand", and by the position of the predicted word within its number."""

from __future__ import annotations

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
    model: HumanNumbersLM, vocab: Vocab, starts: list[int], fed: int, run: int
) -> list[int]:
    """The service's counting check, in process: a session fed the numbers s .. s+fed-1
    (from the zero state) continues greedily, one number after another; how many of the next
    `run` numbers it gets right in a row, for each start s.

    Greedy generation equals the true stream up to its first mistake, so one teacher-forced
    forward over prompt + true continuation finds that mistake: no step-by-step decoding.
    Words a user may not type (the special tokens but xxbos) are never chosen, as in the engine.
    """
    model.eval()
    device = next(model.parameters()).device
    comma = vocab.stoi[","]
    allowed = set(vocab.encode(" ".join([*vocab.words, "xxbos"])))
    banned = torch.tensor([i for i in range(len(vocab)) if i not in allowed], dtype=torch.long)
    prompts = [vocab.encode(number_text(range(s, s + fed))) for s in starts]
    truths = [vocab.encode(number_text(range(s + fed, s + fed + run))) for s in starts]
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
