import random
import re
import sys

import pytest

from model_store import UnknownWord, split_words
from model_store.vocab import _TOKEN_RE


def test_split_is_case_insensitive_and_commas_may_touch():
    assert split_words("  One,two ,THREE  ,  four") == [
        "one",
        ",",
        "two",
        ",",
        "three",
        ",",
        "four",
    ]
    assert split_words("") == []


def test_split_equals_the_token_pattern_on_any_text():
    """split_words works by str methods; its tokens are the pattern's (what token_ends and the
    docs describe) on texts of every kind of space, commas, letters and odd code points."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    pieces = [*spaces, ",", ",,", "one", "Two", "xxbos", "é", "İ", "\u200b", "\x00", "-"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert split_words(text) == _TOKEN_RE.findall(text.lower()), repr(text)
    assert all(re.fullmatch(r"\s", c) for c in spaces)  # the pattern's \s is str.isspace


def test_encode_tokens_are_the_words_of_the_ids(data):
    text = " Eight thousand,nine , XXBOS"
    tokens, ids = data.vocab.encode_tokens(text)
    assert tokens == ["eight", "thousand", ",", "nine", ",", "xxbos"]
    assert data.vocab.decode(ids) == tokens and data.vocab.encode(text) == ids


def test_encode_decode_round_trip(data):
    ids = data.vocab.encode("xxbos eight thousand, nine")
    assert data.vocab.decode(ids) == ["xxbos", "eight", "thousand", ",", "nine"]


@pytest.mark.parametrize(
    ("text", "word", "pos"),
    [("one two eleventy", "eleventy", 2), ("one xxpad", "xxpad", 1), ("xxfake", "xxfake", 0)],
)
def test_unknown_words_are_named(data, text, word, pos):
    with pytest.raises(UnknownWord) as e:
        data.vocab.encode(text)
    assert e.value.word == word and e.value.position == pos
    assert repr(word) in str(e.value)


def test_the_words_a_user_may_type_and_a_model_may_predict(data):
    """One definition: the words (the 29 number words and ","), which are typed and predicted;
    xxbos, which may be typed and is never predicted; the rest, neither."""
    vocab = data.vocab
    assert len(vocab.words) == 30 and "," in vocab.words and "thousand" in vocab.words
    assert not any(w.startswith("xx") for w in vocab.words)
    assert list(vocab.typable) == [*vocab.words, "xxbos"]
    assert all(vocab.itos[i] == t for t, i in vocab.typable.items())
    predicted = {vocab.stoi[w] for w in vocab.words}
    assert set(vocab.unpredictable) == set(range(len(vocab))) - predicted
    assert vocab.stoi["xxbos"] in vocab.unpredictable and vocab.stoi["xxpad"] in vocab.unpredictable


def test_long_texts_read_in_pieces_equal_the_plain_reading(data):
    """A text past PIECE_CHARS is read piece by piece (pieces kept for the next text that
    shares them): the same tokens and ids as reading it whole, whatever the spaces, commas and
    cases; an unknown word anywhere is named at its position in the whole text."""
    from model_store.vocab import PIECE_CHARS, PIECE_KEPT, pieces

    vocab = data.vocab
    rng = random.Random(3)
    words = [*vocab.words, "xxbos", "XXBOS", "One", "THOUSAND"]
    seps = [" ", ", ", ",", " ,", "\n", "\u00a0", " ,\t", ",,"]

    def items(n: int) -> list[str]:
        return [rng.choice(words) + rng.choice(seps) for _ in range(n)]

    def text(n: int) -> str:
        return "".join(items(n))

    shared = items(600)
    assert len("".join(shared)) > 3 * PIECE_CHARS
    for _ in range(40):
        t = "".join(shared[: rng.randint(0, len(shared))]) + text(rng.randint(0, 300))
        assert "".join(pieces(t)) == t
        assert vocab.encode_tokens(t) == vocab._encode_tokens(t)  # the plain reading
        bad = t + " eleventy , " + text(rng.randint(0, 200))
        with pytest.raises(UnknownWord) as e:
            vocab.encode_tokens(bad)
        assert e.value.word == "eleventy" and e.value.position == len(split_words(t))
    assert 0 < len(vocab._read) <= PIECE_KEPT
    for _ in range(PIECE_KEPT + 10):  # pieces never seen again go first
        vocab.encode_tokens(text(400))
    assert len(vocab._read) == PIECE_KEPT
