"""Sequence states as rows of preallocated tensors per model (like pages of a KV cache).

A model declares its per-sequence state as named parts of fixed shape and dtype
(`HumanNumbersLM.state_spec`); the pool keeps one (capacity, *shape) tensor per part, and each
live sequence owns the same row of every part. The pool is the engine's own: callers hold a
`Sequence` handle (app.engine.sequences), never a row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from model_store import State, StateSpec


class SlotPool:
    """Per-part state tensors on the model's device; each live sequence owns a row (slot).

    Rows are handed out from the free list, else the next never-used row; when none is left
    the pool grows by half (`chunk` rows at least), so n rows are copied O(log n) times in all.
    Rows are not written when handed out: a new, freed or reset row is marked *pending*, reads
    as the model's zero state (`zero`, one row of `init_state`), and all pending rows are reset
    together, one `index_copy_` per part, before the next `gather`. So opening a sequence costs
    no tensor op, a batch of 256 short-lived sequences costs one reset per part instead of 256,
    and rows never used cost no memory (on the CPU the OS maps `torch.empty`'s pages lazily).
    """

    def __init__(
        self,
        spec: dict[str, StateSpec],
        device: torch.device,
        zero: State | None = None,
        chunk: int = 1024,
    ):
        self.spec = spec
        self.device = device
        self.chunk = chunk
        self.zero_state: State = {
            name: (
                zero[name].reshape(s.shape).to(device, s.dtype)
                if zero is not None
                else torch.zeros(s.shape, dtype=s.dtype, device=device)
            )
            for name, s in spec.items()
        }
        self.parts: State = {
            name: torch.empty(0, *s.shape, dtype=s.dtype, device=device) for name, s in spec.items()
        }
        self._free: list[int] = []
        self._used = 0  # rows below this were handed out at least once
        self._pending: set[int] = set()  # rows that hold stale values and read as zero
        self.in_use = 0

    @property
    def capacity(self) -> int:
        return next(iter(self.parts.values())).shape[0]

    def _grow(self) -> None:
        old = self.capacity
        new = old + max(self.chunk, old // 2)
        for name, part in self.parts.items():
            grown = torch.empty(new, *part.shape[1:], dtype=part.dtype, device=self.device)
            grown[:old] = part
            self.parts[name] = grown
        if self.device.type == "cpu":
            release_freed_memory()

    def alloc(self) -> int:
        """A row reading as the zero state (it is pending until the next gather)."""
        if self._free:
            slot = self._free.pop()  # pending since it was freed
        else:
            if self._used == self.capacity:
                self._grow()
            slot = self._used
            self._used += 1
            self._pending.add(slot)
        self.in_use += 1
        return slot

    def free(self, slot: int) -> None:
        assert 0 <= slot < self.capacity, f"slot {slot} out of range"
        self._free.append(slot)
        self._pending.add(slot)  # zeroed with the others before the next gather
        self.in_use -= 1

    def zero(self, slot: int) -> None:
        self._pending.add(slot)

    def flush(self) -> None:
        """Reset every pending row to the zero state: one batched copy per part."""
        if not self._pending:
            return
        rows = torch.tensor(sorted(self._pending), device=self.device)
        for name, part in self.parts.items():
            part.index_copy_(0, rows, self.zero_state[name].expand(len(rows), *part.shape[1:]))
        self._pending.clear()

    def read(self, slot: int) -> State:
        """A copy of one row of every part."""
        if slot in self._pending:
            return {name: zero.clone() for name, zero in self.zero_state.items()}
        return {name: part[slot].clone() for name, part in self.parts.items()}

    def write(self, slot: int, state: State) -> None:
        """Set one row of every part; the parts must be exactly the declared ones."""
        assert state.keys() == self.parts.keys(), f"parts {sorted(state)} != {sorted(self.parts)}"
        self._pending.discard(slot)  # or the next flush would wipe what is written now
        for name, part in self.parts.items():
            part[slot].copy_(state[name])

    def gather(self, slots: Tensor) -> State:
        """Rows `slots` of every part, batched: (B, *shape) each."""
        self.flush()
        return {name: part.index_select(0, slots) for name, part in self.parts.items()}

    def scatter(self, slots: Tensor, state: State) -> None:
        for name, part in self.parts.items():
            part.index_copy_(0, slots, state[name])


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator may not hoard, or not trim
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the blocks the pool's previous tensors leave behind back to the OS. Growing copies
    every part into a larger tensor; glibc keeps freed blocks below its adaptive mmap
    threshold in its heap. In process, 100,000 gru-copy rows (1,409 bytes each) held 215 MiB
    when grown 1,024 at a time without this, and 145 MiB grown by half with it."""
    if _TRIM is not None:
        _TRIM(0)


def describe(spec: dict[str, StateSpec]) -> tuple[str, str]:
    """(dtype, shape) texts of a state layout, as stored beside exported bytes. A state of one
    float32 part `h` keeps the seed format ("float32", "1,56"); others name every part:
    ("parts", "h:float32:1,64;keys:float32:16,16;...")."""
    return _describe(tuple(spec.items()))


@functools.cache  # a handful of layouts (one a model); asked on every restore and export
def _describe(spec: tuple[tuple[str, StateSpec], ...]) -> tuple[str, str]:
    if len(spec) == 1 and spec[0][0] == "h" and spec[0][1].dtype == torch.float32:
        return "float32", ",".join(str(n) for n in spec[0][1].shape)
    parts = (
        f"{name}:{str(s.dtype).removeprefix('torch.')}:{','.join(str(n) for n in s.shape)}"
        for name, s in spec
    )
    return "parts", ";".join(parts)


def to_bytes(state: State, spec: dict[str, StateSpec]) -> bytes:
    """One sequence's state (each part (*shape)) as the parts' raw bytes, in `spec` order."""
    return b"".join(
        state[name].detach().to("cpu", s.dtype).contiguous().numpy().tobytes()
        for name, s in spec.items()
    )


def part_sizes(spec: dict[str, StateSpec]) -> dict[str, int]:
    """Each part's size in bytes, in the order the exported bytes hold them."""
    return {name: math.prod(s.shape) * s.dtype.itemsize for name, s in spec.items()}


def from_bytes(data: bytes, spec: dict[str, StateSpec]) -> State:
    """The inverse of `to_bytes`; ValueError if the length does not fit the layout."""
    sizes = part_sizes(spec)
    if len(data) != sum(sizes.values()):
        raise ValueError(f"{len(data)} bytes of state, the layout needs {sum(sizes.values())}")
    buf, state, at = bytearray(data), {}, 0
    for name, s in spec.items():
        part = torch.frombuffer(buf, dtype=s.dtype, count=math.prod(s.shape), offset=at)
        state[name] = part.view(s.shape)
        at += sizes[name]
    return state
