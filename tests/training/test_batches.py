import pytest
import torch

from training.batches import LMBatches


def test_rows_windows_and_shifted_targets():
    ids = list(range(1001))
    b = LMBatches(ids, bs=4, bptt=40)
    assert b.row_len == 250
    windows = list(b)
    assert len(windows) == len(b) == 7  # six of 40 and one of 10
    assert [x.shape[1] for x, _ in windows] == [40] * 6 + [10]
    x0, y0 = windows[0]
    assert x0.shape == (4, 40)
    assert torch.equal(y0[:, :-1], x0[:, 1:])  # targets are inputs shifted by one
    # each row is a contiguous piece of the stream...
    assert x0[:, 0].tolist() == [0, 250, 500, 750]
    # ...and the next window of a row continues it, so a carried hidden state is the right one
    x1, _ = windows[1]
    assert torch.equal(x1[:, 0], y0[:, -1])
    whole = torch.cat([x for x, _ in windows], dim=1)
    assert torch.equal(whole.flatten(), torch.arange(1000))


def test_every_position_is_a_target_once():
    b = LMBatches(list(range(50_079)), bs=64, bptt=40)
    ys = torch.cat([y for _, y in b], dim=1)
    assert ys.numel() == 64 * 782
    assert len(set(ys.flatten().tolist())) == ys.numel()


@pytest.mark.parametrize(("n", "bs", "bptt"), [(10, 0, 5), (10, 2, 0), (3, 4, 5)])
def test_bad_shapes_are_refused(n, bs, bptt):
    with pytest.raises(ValueError):
        LMBatches(list(range(n)), bs=bs, bptt=bptt)


def test_cursor_batches_read_rows_as_lm_batches_until_moved():
    from training.batches import CursorBatches

    ids = list(range(1001))
    c = CursorBatches(ids, bs=4, bptt=40)
    assert len(c) == len(LMBatches(ids, bs=4, bptt=40)) == 7
    x0, y0, wrapped = c.window()
    assert x0[:, 0].tolist() == [0, 250, 500, 750] and not wrapped.any()
    assert torch.equal(y0[:, :-1], x0[:, 1:]) and torch.equal(y0[:, -1], x0[:, -1] + 1)
    c.move(torch.tensor([False, True, False, False]), torch.tensor([7]))
    x1, _, _ = c.window()
    assert x1[:, 0].tolist() == [40, 7, 540, 790]  # the moved row reads on from 7
    x2, _, _ = c.window()
    assert x2[1, 0] == 47  # and goes on from there
    c.move(torch.tensor([True, False, False, False]), torch.tensor([990]))
    x3, _, wrapped = c.window()  # 990 + 41 > 1001: the row starts again at the beginning
    assert wrapped.tolist() == [True, False, False, False] and x3[0, 0] == 0
    c.rewind()
    assert c.window()[0][:, 0].tolist() == [0, 250, 500, 750]


def test_restart_points_are_number_starts(data):
    from training.loop import restart_points

    ids = data.ids("train")
    itos = data.vocab.itos
    begin, carry, numbers = restart_points(ids, data.vocab)
    assert itos[ids[0]] == "xxbos" and int(begin[0]) == 0 and len(begin) == 100
    assert [itos[ids[int(p)]] for p in begin[1:4]] == ["one", "two", "three"]
    assert itos[ids[int(begin[-1])]] == "ninety"  # 99, the last of the first 99 numbers
    assert len(numbers) == 7999 and all(itos[ids[int(p) - 1]] == "," for p in numbers[1:])
    # 11 numbers before each of the seven carries 999 -> 1,000, ..., 6,999 -> 7,000
    assert len(carry) == 7 * 11 and set(carry.tolist()) <= set(numbers.tolist())
    text = " ".join(itos[i] for i in ids[int(carry[0]) : int(carry[0]) + 12])
    assert text.startswith("nine hundred eighty eight ,")
