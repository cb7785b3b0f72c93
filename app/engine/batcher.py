"""The step batcher: continuous batching of state updates for one model.

Every request is a step: feed some token ids into a slot's state and return the next-word
distribution of the new state. One loop per model takes every step that is ready, runs ONE
batched forward (gather the slots' states, advance them, scatter them back) and resolves each
step's future. Steps that arrive while a batch runs join the next one. Long inputs are fed
`prefill_chunk` tokens per batch, so one long text does not pad everybody's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.core.errors import AtCapacity, NotReady
from app.engine.slots import SlotPool
from model_store import HumanNumbersLM, Vocab


@dataclass(eq=False)
class Step:
    slot: int
    ids: list[int]
    future: asyncio.Future[Tensor]
    on_applied: Callable[[], None] | None = None  # runs when the state holds all the ids
    done: int = 0  # ids already fed


@dataclass
class BatcherConfig:
    max_batch: int = 256  # steps in one forward
    max_queue: int = 4096  # queued steps before AtCapacity
    batch_wait_s: float = 0.0  # wait this long for a fuller batch when not full (0: never)
    prefill_chunk: int = 64  # ids of one step fed per batch at most


@dataclass
class BatchStats:
    batches: int = 0
    steps: int = 0
    tokens: int = 0
    observers: list[Callable[[int, int], None]] = field(default_factory=list)

    def record(self, steps: int, tokens: int) -> None:
        self.batches += 1
        self.steps += steps
        self.tokens += tokens
        for observe in self.observers:
            observe(steps, tokens)


class StepBatcher:
    def __init__(
        self,
        model: HumanNumbersLM,
        vocab: Vocab,
        device: torch.device,
        config: BatcherConfig | None = None,
    ):
        self.model = model
        self.vocab = vocab
        self.device = device
        self.config = config or BatcherConfig()
        self.slots = SlotPool(model.state_shape, device)
        self.stats = BatchStats()
        # Tokens a user cannot type (fastai's special tokens, the filler) are never predicted.
        allowed = set(vocab.words)
        self._banned = torch.tensor(
            [i for i, t in enumerate(vocab.itos) if t not in allowed], dtype=torch.long
        ).to(device)
        self._pending: deque[Step] = deque()
        self._has_work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        assert self._task is None, "batcher already started"
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="step-batcher")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            step = self._pending.popleft()
            if not step.future.done():
                step.future.set_exception(NotReady("the server is shutting down"))

    # -- requests --------------------------------------------------------------------------
    async def step(
        self, slot: int, ids: list[int], on_applied: Callable[[], None] | None = None
    ) -> Tensor:
        """Feed `ids` into `slot`'s state; the next-word probabilities (V,) on the CPU.

        `on_applied` runs as soon as the state holds the ids, even if the caller is cancelled
        meanwhile, so bookkeeping about the state never drifts from the state itself.
        """
        if self._closed:
            raise NotReady("the server is shutting down")
        if len(self._pending) >= self.config.max_queue:
            raise AtCapacity(
                f"the server is at capacity ({len(self._pending)} steps queued): retry shortly"
            )
        future: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
        self._pending.append(Step(slot, ids, future, on_applied))
        self._has_work.set()
        return await future

    # -- the loop --------------------------------------------------------------------------
    async def _loop(self) -> None:
        cfg = self.config
        while True:
            await self._has_work.wait()
            if cfg.batch_wait_s and len(self._pending) < cfg.max_batch:
                await asyncio.sleep(cfg.batch_wait_s)
            batch: list[Step] = []
            while self._pending and len(batch) < cfg.max_batch:
                step = self._pending.popleft()
                if not step.future.cancelled():  # its caller is gone: never apply it
                    batch.append(step)
            if batch:
                self._run(batch)
            if not self._pending:
                self._has_work.clear()
            await asyncio.sleep(0)  # let the resolved callers run and new steps arrive

    def _run(self, batch: list[Step]) -> None:
        try:
            with torch.inference_mode():
                probs = self.forward(batch)
        except Exception as e:  # a broken batch fails its steps, never the loop
            for step in batch:
                step.future.set_exception(e)
            return
        unfinished = []
        for i, step in enumerate(batch):
            if step.done < len(step.ids):
                unfinished.append(step)
                continue
            if step.on_applied is not None:
                step.on_applied()
            if not step.future.done():
                step.future.set_result(probs[i])
        self._pending.extendleft(reversed(unfinished))  # ahead of newer steps, in order

    def forward(self, batch: list[Step]) -> Tensor:
        """One batched forward: gather, advance, scatter; next-word probabilities (B, V)."""
        assert len({s.slot for s in batch}) == len(batch), "a slot appears twice in a batch"
        chunk = self.config.prefill_chunk
        pieces = [s.ids[s.done : s.done + chunk] for s in batch]
        slots = torch.tensor([s.slot for s in batch], device=self.device)
        h = self.slots.states.index_select(0, slots)  # (B, L, H)
        width = max(len(p) for p in pieces)
        if width:
            fed = [i for i, p in enumerate(pieces) if p]
            x = torch.tensor([p + [0] * (width - len(p)) for p in pieces if p], device=self.device)
            lengths = torch.tensor([len(pieces[i]) for i in fed])
            ragged = len(fed) < len(batch) or bool((lengths != width).any())
            if len(fed) == len(batch):
                h = self.model.advance(x, h, lengths if ragged else None)
            else:
                rows = torch.tensor(fed, device=self.device)
                h = h.index_copy(0, rows, self.model.advance(x, h[rows], lengths))
            self.slots.states.index_copy_(0, slots, h)
            for step, piece in zip(batch, pieces, strict=True):
                step.done += len(piece)
        logits = self.model.head(h)
        logits[:, self._banned] = float("-inf")
        self.stats.record(len(batch), sum(len(p) for p in pieces))
        return torch.softmax(logits, dim=-1).float().cpu()
