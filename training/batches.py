"""Language-model batches: the stream cut into `bs` rows, read `bptt` tokens at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


class LMBatches:
    """Iterates (x, y) windows of a token stream, as fastai v1's LanguageModelPreLoader.

    The stream is split into `bs` contiguous rows; batch i holds columns [i*bptt, (i+1)*bptt)
    of every row, and y is x shifted by one token. Row r of batch i+1 continues row r of
    batch i, so the hidden state of one window is the right start for the next (the training
    loop carries it, detached). The last window may be shorter than bptt.
    """

    def __init__(self, ids: Sequence[int], bs: int, bptt: int, device: torch.device | str = "cpu"):
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
        row_len = (len(ids) - 1) // bs  # tokens of x per row; y needs one more
        if row_len < 1:
            raise ValueError(f"a stream of {len(ids)} tokens is too short for bs={bs}")
        stream = torch.tensor(ids, dtype=torch.long)
        rows = torch.stack([stream[r * row_len : r * row_len + row_len + 1] for r in range(bs)])
        self.x = rows[:, :-1].to(device)  # (bs, row_len)
        self.y = rows[:, 1:].to(device)
        self.bs, self.bptt, self.row_len = bs, bptt, row_len

    def __len__(self) -> int:
        return -(-self.row_len // self.bptt)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.row_len, self.bptt):
            yield self.x[:, start : start + self.bptt], self.y[:, start : start + self.bptt]
