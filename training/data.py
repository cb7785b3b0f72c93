"""The Human Numbers data set: generated exactly as fastai ships it, or read from a folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from model_store.vocab import BOS, Vocab, split_words

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
TRAIN_RANGE = range(1, 8000)  # 1 .. 7,999
VALID_RANGE = range(8001, 10000)  # 8,001 .. 9,999 (8,000 is in neither file)
# A split of train.txt alone that stands in for train/valid when choosing a design: training on
# 1..6,999 leaves "seven" unseen as a thousands word in 7,001..7,999, as "eight" and "nine" are
# in valid.txt. valid.txt is for evaluation only, never for choosing among runs.
PROXY_TRAIN_RANGE = range(1, 7000)
PROXY_VALID_RANGE = range(7001, 8000)
# A second split of train.txt that also holds a thousands carry into an unseen thousands word, as
# valid.txt's 8,999 -> 9,000 is: train 1..5,999, evaluate 6,001..7,999 ("six" and "seven" unseen
# as thousands words, and 6,999 -> 7,000 crosses from one into the other).
CARRY_PROXY_TRAIN_RANGE = range(1, 6000)
CARRY_PROXY_VALID_RANGE = range(6001, 8000)
# A third, for a carry whose offered word (the previous number's first word) answers otherwise
# at another carry of the data: 9 -> ten, where train.txt's 999 -> one thousand also offers
# "nine", as 9,999 -> ten thousand does. It is the carry split without 1..10, so "nine ," ->
# "ten" (and "ten" as a number's first word) is never seen; 9 -> 10 is then evaluated with the
# carry split's figures (the numbers 1..10 are only read in the counting check's prompts).
NINE_PROXY_TRAIN_RANGE = range(11, 6000)
PROXIES = {
    "seven": (PROXY_TRAIN_RANGE, PROXY_VALID_RANGE),
    "carry": (CARRY_PROXY_TRAIN_RANGE, CARRY_PROXY_VALID_RANGE),
    "nine": (NINE_PROXY_TRAIN_RANGE, CARRY_PROXY_VALID_RANGE),
}


def _below_thousand(n: int) -> list[str]:
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        words.append(TENS[rest // 10])
        if rest % 10:
            words.append(ONES[rest % 10])
    elif rest:
        words.append(ONES[rest])
    return words


def number_words(n: int) -> str:
    """1 <= n <= 999,999 in words, as the data set writes them: no "and", no hyphens. The data
    holds 1..9,999 only; larger numbers (a thousands part that is itself a number: `twenty
    three thousand one`) are for evaluating how far a model counts, never for training."""
    assert 1 <= n <= 999_999, f"number out of range: {n}"
    thousands, rest = divmod(n, 1000)
    words = [*_below_thousand(thousands), "thousand"] if thousands else []
    return " ".join(words + _below_thousand(rest))


def file_text(numbers: range) -> str:
    """A data file's content: one number a line, each line ending in a space."""
    return "".join(f"{number_words(n)} \n" for n in numbers)


def write_data(out: Path | str) -> tuple[Path, Path]:
    """Write train.txt and valid.txt into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, valid = out / "train.txt", out / "valid.txt"
    train.write_text(file_text(TRAIN_RANGE))
    valid.write_text(file_text(VALID_RANGE))
    return train, valid


def tokenize_file(text: str) -> list[str]:
    """fastai v1 on this data: lines stripped and joined by ", ", one stream starting with xxbos."""
    joined = ", ".join(line.strip() for line in text.splitlines() if line.strip())
    return [BOS, *split_words(joined)]


@dataclass
class HumanNumbers:
    """Token streams of both splits and the vocabulary built from the training stream."""

    train_tokens: list[str]
    valid_tokens: list[str]
    vocab: Vocab
    fingerprint: str  # sha256 of train.txt + valid.txt as read
    source: str  # "generated" or the folder the files came from

    def ids(self, split: str) -> list[int]:
        tokens = self.train_tokens if split == "train" else self.valid_tokens
        unk = self.vocab.stoi["xxunk"]
        return [self.vocab.stoi.get(t, unk) for t in tokens]


def load_data(folder: Path | str | None = None) -> HumanNumbers:
    """Read train.txt/valid.txt from `folder`, or generate them when no folder is given."""
    if folder is None:
        train_text, valid_text, source = file_text(TRAIN_RANGE), file_text(VALID_RANGE), "generated"
    else:
        folder = Path(folder)
        missing = [n for n in ("train.txt", "valid.txt") if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}")
        train_text = (folder / "train.txt").read_text()
        valid_text = (folder / "valid.txt").read_text()
        source = str(folder)
    train_tokens, valid_tokens = tokenize_file(train_text), tokenize_file(valid_text)
    fingerprint = hashlib.sha256((train_text + "\0" + valid_text).encode()).hexdigest()
    return HumanNumbers(train_tokens, valid_tokens, Vocab.build(train_tokens), fingerprint, source)


def proxy_data(kind: str = "seven") -> HumanNumbers:
    """train.txt split in two (PROXIES[kind]: "seven" is PROXY_TRAIN_RANGE, PROXY_VALID_RANGE;
    "carry" the CARRY_PROXY ranges; "nine" the carry split without 1..10), with train.txt's
    vocabulary: design choices are judged on this, never on valid.txt."""
    if kind not in PROXIES:
        raise ValueError(f"unknown proxy split {kind!r}; known: {', '.join(PROXIES)}")
    train_range, valid_range = PROXIES[kind]
    train_text, valid_text = file_text(train_range), file_text(valid_range)
    vocab = Vocab.build(tokenize_file(file_text(TRAIN_RANGE)))
    fingerprint = hashlib.sha256((train_text + "\0" + valid_text).encode()).hexdigest()
    return HumanNumbers(
        tokenize_file(train_text), tokenize_file(valid_text), vocab, fingerprint, f"proxy {kind}"
    )
