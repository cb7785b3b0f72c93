"""Sequences: the engine's handles on per-sequence state.

A caller opens a sequence on a model's engine (from the start state, or from a state exported
earlier), steps it, generates from it, exports it and closes it. Where its state lives (a row
of the engine's per-part tensors) is the engine's business: a handle never shows a row, and a
closed handle refuses every use. An exported state is bytes plus the layout they were written
in, so a session store can keep it anywhere (Redis) and the engine can refuse a state that
does not fit its model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.errors import EngineFailure
from app.engine.slots import describe, from_bytes, to_bytes
from model_store import State, StateSpec

if TYPE_CHECKING:
    from app.engine.batcher import Applied, Generation, Job, StepBatcher


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


class Sequence:
    """A handle on one sequence of `engine`'s model. Feeding it (`step`, `generate`) goes
    through the engine's batches; `export`, `restore`, `reset` and `close` act at once."""

    __slots__ = ("_engine", "_row")

    def __init__(self, engine: StepBatcher, row: int):
        self._engine = engine
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
            f"a closed sequence of model {self._engine.name!r} was used: open a new one"
        )

    def submit(
        self,
        ids: list[int],
        top_k: int = 0,
        gen: Generation | None = None,
        on_applied: Applied | None = None,
        reserved: bool = False,
    ) -> Job:
        """Queue a job on this sequence (see StepBatcher.submit); its future resolves."""
        return self._engine.submit(self, ids, top_k, gen, on_applied, reserved)

    async def step(
        self, ids: list[int], top_k: int, on_applied: Applied | None = None
    ) -> list[tuple[int, float]]:
        """Feed `ids`; the `top_k` likeliest next words (id, prob).

        `on_applied` hears of every piece of ids as soon as the state holds it, even if the
        caller is cancelled meanwhile, so bookkeeping never drifts from the state itself.
        """
        job = self._engine.submit(self, ids, top_k, None, on_applied)
        result: list[tuple[int, float]] = await job.future  # type: ignore[assignment]
        return result

    async def generate(
        self, ids: list[int], gen: Generation, on_applied: Applied | None = None
    ) -> Generation:
        """Feed `ids`, then generate words (fed back in) until a stop word or max_words."""
        job = self._engine.submit(self, ids, 0, gen, on_applied)
        await job.future
        return gen

    def state(self) -> State:
        """A copy of every part, on the engine's device."""
        return self._engine._pool.read(self.row)

    def export(self) -> ExportedState:
        """The state as bytes with its layout; a sequence never fed exports the start state."""
        return ExportedState.pack(self.state(), self._engine.spec)

    def restore(self, saved: ExportedState) -> None:
        """Set the state to an exported one (this model's: LayoutMismatch otherwise)."""
        row = self.row
        self._engine._pool.write(row, saved.unpack(self._engine.spec))

    def reset(self) -> None:
        """Back to the start state."""
        self._engine._pool.zero(self.row)

    def close(self) -> None:
        """Give the state back to the engine; closing again does nothing."""
        if self._row >= 0:
            self._engine._pool.free(self._row)
            self._row = -1
