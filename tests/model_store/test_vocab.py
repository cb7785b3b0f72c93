import pytest

from model_store import UnknownWord, split_words


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
