import itertools

import pytest

from training.data import (
    file_text,
    load_data,
    number_words,
    proxy_data,
    tokenize_file,
    write_data,
)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1, "one"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (7010, "seven thousand ten"),
        (8101, "eight thousand one hundred one"),
        (9999, "nine thousand nine hundred ninety nine"),
    ],
)
def test_number_words(n, words):
    assert number_words(n) == words


def test_files_are_written_as_fastai_ships_them(tmp_path):
    train, valid = write_data(tmp_path)
    train_lines = train.read_text().split("\n")
    valid_lines = valid.read_text().split("\n")
    assert train_lines[:3] == ["one ", "two ", "three "]
    assert train_lines[-2:] == ["seven thousand nine hundred ninety nine ", ""]
    assert len(train_lines) - 1 == 7999
    assert valid_lines[0] == "eight thousand one "
    assert valid_lines[-2] == "nine thousand nine hundred ninety nine "
    assert len(valid_lines) - 1 == 1999
    assert "eight thousand " not in train_lines + valid_lines
    assert not any(("-" in line or " and " in line) for line in train_lines + valid_lines)


def test_token_counts_and_vocab(data):
    assert len(data.train_tokens) == 50_079
    assert len(data.valid_tokens) == 13_017
    assert data.train_tokens[:4] == ["xxbos", "one", ",", "two"]
    assert data.valid_tokens[:4] == ["xxbos", "eight", "thousand", "one"]
    assert len(data.vocab) == 40
    assert data.vocab.itos[:10] == (
        "xxunk",
        "xxpad",
        "xxbos",
        "xxeos",
        "xxfld",
        "xxmaj",
        "xxup",
        "xxrep",
        "xxwrep",
        ",",
    )
    assert data.vocab.itos[-1] == "xxfake"
    assert len(data.vocab.words) == 30  # 29 words and the comma
    assert "xxunk" not in data.ids("train") and data.vocab.stoi["xxunk"] not in data.ids("valid")


def test_real_files_are_read_from_a_folder(tmp_path, data):
    write_data(tmp_path)
    read = load_data(tmp_path)
    assert read.train_tokens == data.train_tokens
    assert read.valid_tokens == data.valid_tokens
    assert read.fingerprint == data.fingerprint
    assert read.source == str(tmp_path)


def test_a_changed_file_changes_the_fingerprint(tmp_path, data):
    write_data(tmp_path)
    (tmp_path / "valid.txt").write_text(file_text(range(8001, 9000)))
    assert load_data(tmp_path).fingerprint != data.fingerprint


def test_missing_files_are_named(tmp_path):
    (tmp_path / "train.txt").write_text("one \n")
    with pytest.raises(FileNotFoundError, match=r"valid\.txt"):
        load_data(tmp_path)


def test_tokenize_joins_lines_with_commas():
    assert tokenize_file("one \ntwo \n\n") == ["xxbos", "one", ",", "two"]


def test_the_proxy_split_holds_out_a_thousands_word_of_train_txt(data):
    """Training on 1..6,999 and evaluating on 7,001..7,999: "seven" is a thousands word only
    in the evaluation part, as "eight" and "nine" are in valid.txt; no valid.txt token is used."""
    proxy = proxy_data()
    assert proxy.vocab.itos == data.vocab.itos
    train_text = " ".join(proxy.train_tokens)
    assert (
        "seven thousand" not in train_text and "six thousand nine hundred ninety nine" in train_text
    )
    assert proxy.valid_tokens[:4] == ["xxbos", "seven", "thousand", "one"]
    assert proxy.valid_tokens[-6:] == ["seven", "thousand", "nine", "hundred", "ninety", "nine"]
    assert len(proxy.train_tokens) + len(proxy.valid_tokens) < len(data.train_tokens)


def test_the_carry_proxy_split_crosses_a_thousands_carry_into_an_unseen_word(data):
    """Training on 1..5,999 and evaluating on 6,001..7,999: "six" and "seven" are thousands
    words only in the evaluation part, which crosses 6,999 -> 7,000 as valid.txt crosses
    8,999 -> 9,000; no valid.txt token is used."""
    proxy = proxy_data("carry")
    assert proxy.vocab.itos == data.vocab.itos
    train_text = " ".join(proxy.train_tokens)
    assert "six thousand" not in train_text and "seven thousand" not in train_text
    valid_text = " ".join(proxy.valid_tokens)
    carry = "six thousand nine hundred ninety nine , seven thousand , seven thousand one"
    assert carry in valid_text
    assert proxy.valid_tokens[:4] == ["xxbos", "six", "thousand", "one"]
    assert len(proxy.train_tokens) + len(proxy.valid_tokens) < len(data.train_tokens)
    with pytest.raises(ValueError, match="unknown proxy split 'eight'"):
        proxy_data("eight")


def test_the_nine_proxy_split_holds_out_the_carry_nine_to_ten(data):
    """The carry split without 1..10 (`--proxy nine`): "nine ," -> "ten" is never read, nor
    "ten" as a number's first word, while 999 -> one thousand (the other carry that offers
    "nine") is; the evaluation part is the carry split's."""
    proxy, carry = proxy_data("nine"), proxy_data("carry")
    assert proxy.vocab.itos == data.vocab.itos
    assert proxy.train_tokens[:4] == ["xxbos", "eleven", ",", "twelve"]
    assert proxy.valid_tokens == carry.valid_tokens
    train = proxy.train_tokens
    assert not any(a == "," and b == "ten" for a, b in itertools.pairwise(train))
    train_text = " ".join(train)
    assert "nine hundred ninety nine , one thousand" in train_text
    assert train_text.endswith("five thousand nine hundred ninety nine")
