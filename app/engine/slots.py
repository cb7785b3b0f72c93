"""Session states as rows of one preallocated tensor per model (like pages of a KV cache)."""

from __future__ import annotations

import torch
from torch import Tensor


class SlotPool:
    """A (capacity, L, H) state tensor on the model's device; each live sequence owns a row.

    Grows by `chunk` rows when full; a freed row goes back to the free list and is zeroed
    when taken again.
    """

    def __init__(self, state_shape: tuple[int, ...], device: torch.device, chunk: int = 1024):
        self.state_shape = state_shape
        self.device = device
        self.chunk = chunk
        self.states: Tensor = torch.zeros(0, *state_shape, device=device)
        self._free: list[int] = []
        self.in_use = 0

    @property
    def capacity(self) -> int:
        return self.states.shape[0]

    def _grow(self) -> None:
        old = self.capacity
        extra = torch.zeros(self.chunk, *self.state_shape, device=self.device)
        self.states = torch.cat([self.states, extra])
        self._free.extend(range(old + self.chunk - 1, old - 1, -1))  # lowest row on top

    def alloc(self) -> int:
        """A row holding the zero state."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.states[slot].zero_()
        self.in_use += 1
        return slot

    def free(self, slot: int) -> None:
        assert 0 <= slot < self.capacity, f"slot {slot} out of range"
        self._free.append(slot)
        self.in_use -= 1

    def zero(self, slot: int) -> None:
        self.states[slot].zero_()

    def read(self, slot: int) -> Tensor:
        """A copy of one row (L, H)."""
        return self.states[slot].clone()

    def write(self, slot: int, state: Tensor) -> None:
        self.states[slot].copy_(state)
