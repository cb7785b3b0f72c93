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
