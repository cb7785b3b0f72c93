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


class CursorBatches:
    """The stream read by `bs` cursors, `bptt` tokens a window, where any row can be moved.

    Cursor r starts at r * (len // bs), as LMBatches lays its rows out, and reads on from
    there; `move` sends rows elsewhere (a restart at another point of the stream: the caller
    zeroes their state). Every window is `bptt` long: a row that would run past the end starts
    again at the stream's beginning, and `window` says which did (their state must be zeroed).
    An epoch is as many windows as LMBatches has.
    """

    def __init__(self, ids: Sequence[int], bs: int, bptt: int, device: torch.device | str = "cpu"):
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
        self.row_len = (len(ids) - 1) // bs
        if self.row_len < 1 or len(ids) <= bptt:
            raise ValueError(f"a stream of {len(ids)} tokens is too short for bs={bs}")
        self.stream = torch.tensor(ids, dtype=torch.long)
        self.bs, self.bptt, self.device = bs, bptt, device
        self.span = torch.arange(bptt + 1)
        self.rewind()

    def __len__(self) -> int:
        return -(-self.row_len // self.bptt)

    def rewind(self) -> None:
        """Every cursor back to its row's start (the start of an epoch)."""
        self.cursor = torch.arange(self.bs) * self.row_len

    def move(self, rows: Tensor, to: Tensor) -> None:
        """Rows (B,) bool go on from stream positions `to` (one per moved row)."""
        self.cursor[rows.cpu()] = to.cpu()

    def window(self) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, wrapped): the next window of every row, and the rows that started again at
        the beginning of the stream."""
        wrapped = self.cursor + self.bptt + 1 > len(self.stream)
        self.cursor[wrapped] = 0
        w = self.stream[self.cursor.unsqueeze(1) + self.span]  # (B, bptt + 1)
        self.cursor += self.bptt
        return w[:, :-1].to(self.device), w[:, 1:].to(self.device), wrapped.to(self.device)
