"""The vocabulary and tokenizer of the Human Numbers language models (fastai v1 style)."""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

# fastai v1's special tokens, in the order Vocab.create puts them first.
SPECIAL_TOKENS = ("xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxmaj", "xxup", "xxrep", "xxwrep")
BOS = "xxbos"
PAD_FILLER = "xxfake"  # fastai pads the vocabulary to a multiple of 8 with this token

# A word is a run of letters (xx tokens included); a comma is a token of its own even when it
# touches a word ("one, two" and "one ,two" both give one , two).
_TOKEN_RE = re.compile(r"[^\s,]+|,")


class UnknownWord(ValueError):
    """A text holds a word that is not in the model's vocabulary."""

    def __init__(self, word: str, position: int):
        self.word = word
        self.position = position
        super().__init__(f"unknown word {word!r} at position {position}")


def split_words(text: str) -> list[str]:
    """Split a text into tokens: lower case, `,` its own token, runs of spaces ignored.

    The tokens `_TOKEN_RE` finds, by str methods in C at a quarter of the regex's time (a
    7,000-character prompt: 82 against 336 µs); `str.split` and the regex's `\\s` agree on
    every code point (both are `str.isspace`; tests/model_store/test_vocab.py checks)."""
    return text.lower().replace(",", " , ").split()


@dataclass(frozen=True)
class Vocab:
    """Maps tokens to ids and back; `itos[i]` is the token of id i."""

    itos: tuple[str, ...]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)
    # The words: every token but fastai's special ones and the filler. They are what a model
    # may predict; a text may hold them and xxbos (`typable`), the start-of-stream token the
    # models were trained with, which is never predicted.
    words: tuple[str, ...] = field(init=False, repr=False, compare=False)
    typable: dict[str, int] = field(init=False, repr=False, compare=False)  # token -> id
    unpredictable: tuple[int, ...] = field(init=False, repr=False, compare=False)  # not words
    # Long texts are read in pieces cut after a "," (`pieces`), each piece's tokens and ids
    # kept here: prompts that share a long prefix (the prefix cache's case) read it once.
    _read: OrderedDict[str, tuple[list[str], list[int]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        real = [t for t in self.itos if t != PAD_FILLER]
        if len(set(real)) != len(real):
            raise ValueError("vocabulary has duplicate tokens")
        stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            stoi.setdefault(tok, i)
        words = tuple(t for t in self.itos if t not in SPECIAL_TOKENS and t != PAD_FILLER)
        typable = {t: stoi[t] for t in (*words, BOS) if t in stoi}
        is_word = set(words)
        unpredictable = tuple(i for i, t in enumerate(self.itos) if t not in is_word)
        object.__setattr__(self, "stoi", stoi)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "typable", typable)
        object.__setattr__(self, "unpredictable", unpredictable)
        object.__setattr__(self, "_read", OrderedDict())

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Token ids of a text; raises UnknownWord naming the first word not in the vocabulary.

        Besides the words, `xxbos` (the start-of-stream token the models were trained with) is
        accepted; other special tokens are not.
        """
        return self.encode_tokens(text)[1]

    def encode_tokens(self, text: str) -> tuple[list[str], list[int]]:
        """`split_words(text)` and their ids (`encode`'s): the words as the vocabulary spells
        them, without decoding the ids again. A long text is read piece by piece, each piece
        from the last PIECE_KEPT read when it was (the same tokens: a piece ends with a ",",
        a token of its own, so no token spans two; a piece with an unknown word sends the
        whole text to the plain reading, which names the word and its position in the text)."""
        if len(text) <= PIECE_CHARS:
            return self._encode_tokens(text)
        read, tokens, ids = self._read, [], []
        for piece in pieces(text):
            got = read.get(piece)
            if got is None:
                try:
                    got = self._encode_tokens(piece)
                except UnknownWord:
                    return self._encode_tokens(text)
                read[piece] = got
                if len(read) > PIECE_KEPT:
                    read.popitem(last=False)
            else:
                read.move_to_end(piece)
            tokens += got[0]
            ids += got[1]
        return tokens, ids

    def _encode_tokens(self, text: str) -> tuple[list[str], list[int]]:
        tokens = split_words(text)
        try:  # one lookup a token, in C: the service's path
            return tokens, list(map(self.typable.__getitem__, tokens))
        except KeyError:
            pos = next(i for i, tok in enumerate(tokens) if tok not in self.typable)
            raise UnknownWord(tokens[pos], pos) from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    @classmethod
    def build(cls, tokens: Sequence[str], min_freq: int = 2, max_vocab: int = 60000) -> Vocab:
        """fastai v1 `Vocab.create`: by frequency, special tokens first, padded to 8k tokens."""
        freq = Counter(tokens)
        itos = [t for t, c in freq.most_common(max_vocab) if c >= min_freq]
        for tok in reversed(SPECIAL_TOKENS):
            if tok in itos:
                itos.remove(tok)
            itos.insert(0, tok)
        itos = itos[:max_vocab]
        while len(itos) % 8 != 0:
            itos.append(PAD_FILLER)
        return cls(tuple(itos))


# Texts longer than this are read in pieces of about this many characters, the last
# PIECE_KEPT pieces read kept (a piece of 1,024 characters holds ~170 tokens: ~12 KB with
# its lists; 256 of them ~3 MB a vocabulary at most).
PIECE_CHARS = 1024
PIECE_KEPT = 256


def pieces(text: str) -> Iterator[str]:
    """`text` cut right after the first "," at or past every PIECE_CHARS characters from the
    last cut: where two texts share a prefix, they share its pieces."""
    start, end = 0, len(text)
    while end - start > PIECE_CHARS:
        cut = text.find(",", start + PIECE_CHARS - 1)
        if cut < 0:
            break
        yield text[start : cut + 1]
        start = cut + 1
    if start < end:
        yield text[start:]


def token_ends(text: str) -> list[int]:
    """Where each token of `text` ends, in characters (the tokens `split_words` finds)."""
    return [m.end() for m in _TOKEN_RE.finditer(text)]
