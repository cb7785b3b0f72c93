"""Sequences: the engine's handles on per-sequence state.

A caller opens a sequence on a model's engine (from the start state, or from a state exported
earlier), steps it, generates from it, exports it and closes it. Where its state lives (a row
of the engine's per-part tensors) is the engine's business: a handle never shows a row, and a
closed handle refuses every use. An exported state is bytes plus the layout they were written
in, so a session store can keep it anywhere (Redis) and the engine can refuse a state that
does not fit its model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core import tracing
from app.core.errors import EngineFailure
from app.core.tracing import JobTrace
from app.engine.generation import Generation, OnWord
from app.engine.params import SamplingParams
from app.engine.slots import SlotPool, describe, from_bytes, to_bytes
from model_store import State, StateSpec

Applied = Callable[[list[int]], None]  # told each piece of ids once the state holds it


class SequenceClosed(EngineFailure):
    """A closed sequence was used: a bug of the caller, never the client's fault."""


class LayoutMismatch(ValueError):
    """An exported state that does not fit the model's state layout (another model, a
    replaced model, damaged bytes). `problem` says what the state is, `layout` what the model
    needs, both as texts for a message."""

    def __init__(self, problem: str, layout: tuple[str, str]):
        self.problem = problem
        self.layout = layout
        super().__init__(f"{problem}; the model needs ({layout[1]}) {layout[0]}")


@dataclass(frozen=True, slots=True)
class ExportedState:
    """One sequence's state as bytes, with its layout: `dtype` and `shape` as `describe`
    writes them ("float32", "1,56" for a state of one float32 part `h`; "parts",
    "h:float32:1,64;keys:float32:16,16;..." naming every part otherwise)."""

    dtype: str
    shape: str
    data: bytes

    @classmethod
    def pack(cls, state: State, spec: dict[str, StateSpec]) -> ExportedState:
        dtype, shape = describe(spec)
        return cls(dtype, shape, to_bytes(state, spec))

    def unpack(self, spec: dict[str, StateSpec]) -> State:
        """The state's parts (on the CPU); LayoutMismatch if it does not fit `spec`."""
        layout = describe(spec)
        if (self.dtype, self.shape) != layout:
            raise LayoutMismatch(f"a state of shape ({self.shape}) {self.dtype}", layout)
        try:
            return from_bytes(self.data, spec)
        except ValueError as e:
            raise LayoutMismatch(f"a damaged state ({e})", layout) from None


@dataclass(eq=False, slots=True)
class Job:
    """One request on a sequence, queued in its engine: feed `feed`, then answer the `top_k`
    next words (a step) or go on with `gen` (a generation). The engine's own."""

    seq: Sequence
    feed: list[int]  # ids still to feed
    future: asyncio.Future[Any]
    top_k: int = 0
    gen: Generation | None = None
    on_applied: Applied | None = None
    at: float = 0.0  # when it was queued (perf_counter): its time to first word counts from then
    last: float = 0.0  # when its generation's latest word came (0: none yet)
    ran: bool = False  # a pass took it: running, no longer waiting
    trace: JobTrace | None = None  # its span, while tracing is on
    timed: bool = True  # False: a step of the server's own (the prefix cache's), no first word


@dataclass(frozen=True, slots=True)
class Host:
    """What a sequence needs of its engine: the model's name, the pool its state is a row
    of, the vocabulary's words (for stop strings), and the queue its jobs join (which
    refuses them when the engine is full, stopped or failed)."""

    name: str
    pool: SlotPool
    itos: tuple[str, ...]
    enqueue: Callable[[Job, bool], None]


class Sequence:
    """A handle on one sequence of an engine's model. Feeding it (`step`, `generate`,
    `start`) goes through the engine's batches; `export`, `restore`, `reset` and `close` act
    at once. A closed handle refuses every use."""

    __slots__ = ("_host", "_row")

    def __init__(self, host: Host, row: int):
        self._host = host
        self._row = row  # -1 once closed

    @property
    def closed(self) -> bool:
        return self._row < 0

    @property
    def row(self) -> int:
        """Where the state is, for the engine alone; SequenceClosed once closed."""
        if self._row < 0:
            raise self.closed_error()
        return self._row

    def closed_error(self) -> SequenceClosed:
        return SequenceClosed(
            f"a closed sequence of model {self._host.name!r} was used: open a new one"
        )

    def _submit(self, job: Job, reserved: bool) -> None:
        if self._row < 0:  # refused before anything is queued
            raise self.closed_error()
        self._host.enqueue(job, reserved)

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def step(
        self,
        ids: list[int],
        top_k: int,
        on_applied: Applied | None = None,
        timed: bool = True,
    ) -> list[tuple[int, float]]:
        """Feed `ids`; the `top_k` likeliest next words (id, prob).

        `on_applied` hears of every piece of ids as soon as the state holds it, even if the
        caller is cancelled meanwhile, so bookkeeping never drifts from the state itself.
        `timed` False: no request's answer (a state kept on the way), no time to first word.
        """
        job = Job(self, ids, self._future(), top_k, None, on_applied, timed=timed)
        if tracing.tracer is not None:
            return await self._traced_step(job)
        self._submit(job, False)
        result: list[tuple[int, float]] = await job.future
        return result

    async def _traced_step(self, job: Job) -> list[tuple[int, float]]:
        job.trace = trace = JobTrace("engine.step", self._host.name, len(job.feed))
        try:
            self._submit(job, False)
            result: list[tuple[int, float]] = await job.future
        except BaseException as e:
            trace.end(e)
            raise
        trace.end()
        return result

    def start(
        self,
        ids: list[int],
        params: SamplingParams,
        on_applied: Applied | None = None,
        on_word: OnWord | None = None,
        on_end: Callable[[Generation], None] | None = None,
        reserved: bool = False,
    ) -> Generation:
        """Feed `ids`, then generate words (fed back in) until a stop or max_words, without
        waiting: the generation fills as the engine goes, `on_end` hears of its end (finished,
        failed or cancelled). A `reserved` one takes the place of one of its request's that
        just ended, so a full queue does not refuse it. With nothing to feed nor generate it
        ends at once, without a job."""
        future = self._future()
        gen = Generation(params, self._host.itos, on_word, future)
        if on_end is not None:
            future.add_done_callback(lambda _: on_end(gen))
        if gen.finish is not None and not ids:
            future.set_result(None)
            return gen
        job = Job(self, ids, future, 0, gen, on_applied)
        if tracing.tracer is not None:
            job.trace = trace = JobTrace("engine.generate", self._host.name, len(ids))
            future.add_done_callback(lambda f: generated(trace, gen, f))
        try:
            self._submit(job, reserved)
        except BaseException as e:
            if job.trace is not None:
                job.trace.end(e)
            raise
        return gen

    async def generate(
        self,
        ids: list[int],
        params: SamplingParams,
        on_applied: Applied | None = None,
        on_word: OnWord | None = None,
    ) -> Generation:
        """`start`, and wait for the end."""
        gen = self.start(ids, params, on_applied, on_word)
        await gen.wait()
        return gen

    def state(self) -> State:
        """A copy of every part, on the engine's device."""
        return self._host.pool.read(self.row)

    def export(self) -> ExportedState:
        """The state as bytes with its layout; a sequence never fed exports the start state."""
        return ExportedState.pack(self.state(), self._host.pool.spec)

    def restore(self, saved: ExportedState) -> None:
        """Set the state to an exported one (this model's: LayoutMismatch otherwise)."""
        row = self.row
        self._host.pool.write(row, saved.unpack(self._host.pool.spec))

    def reset(self) -> None:
        """Back to the start state."""
        self._host.pool.zero(self.row)

    def close(self) -> None:
        """Give the state back to the engine; closing again does nothing."""
        if self._row >= 0:
            self._host.pool.free(self._row)
            self._row = -1


def generated(trace: JobTrace, gen: Generation, future: asyncio.Future[Any]) -> None:
    """End a generation's span (at its future's end): its words, and why it ended."""
    words = {"gen_ai.usage.completion_tokens": gen.n_generated()}
    if future.cancelled():
        trace.end(asyncio.CancelledError(), words)
    elif (error := future.exception()) is not None:
        trace.end(error, words)
    else:
        trace.end(None, {**words, "engine.finish_reason": gen.finish or ""})
