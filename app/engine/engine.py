"""The engine: continuous batching of every sequence of one model.

A job feeds token ids into a sequence's state and then either returns the next-word
distribution (a step) or goes on generating words, each fed back in (a generation). One loop
per model takes every job that is ready, runs ONE batched forward (gather the sequences' states,
advance them, scatter them back), picks the next word of every generating job in the same
pass, and resolves the jobs that are done. Jobs that arrive meanwhile join the next pass;
generations advance together, one word per pass, and leave the batch when they finish. Long
inputs are fed `prefill_chunk` ids per pass, so one long text does not pad everyone's batch.

The engine owns the sequences' states (a `SlotPool`); callers `open` a `Sequence` handle
(app.engine.sequences) and never see where its state is, nor a job. Its health: `failure`
(why its loop stopped, if it did), the counts of its passes (`stats`, `observe`) and its
jobs running and waiting (`jobs`).

Timing, for the metrics: a job's time to first word runs from its queueing to the pass that
answers it (a step) or chooses its first word (a generation: a stop word counts, a prompt's
words scored as given do not); a generation's inter-word times run from one such pass to the
next. One clock read per job and one per pass: the pass's words all came at its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch

from app.core import tracing
from app.core.errors import AtCapacity, EngineFailure, NotReady
from app.engine.sequences import ExportedState, Host, Job, Sequence, SequenceClosed
from app.engine.slots import SlotPool
from model_store import BOS, HumanNumbersLM, StateSpec, Vocab, next_probs, start_state

# A row of the batch for one job: a step's top words (id, prob); a generation's next-word
# probabilities, or for a greedy one its likeliest word and that word's probability.
Row = list[tuple[int, float]] | list[float] | tuple[int, float]
# told of every pass: its rows, the tokens it fed, the words it generated, the times to first
# word of the jobs that got theirs in it and the times since the previous word of the
# generations that got another (seconds)
Observer = Callable[[int, int, int, list[float], list[float]], None]
log = logging.getLogger("app.engine")


def describe(e: BaseException) -> str:
    """An exception in a few words, for an error message (its text cut short)."""
    text = str(e)
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}".rstrip(": ")


@dataclass
class EngineConfig:
    max_batch: int = 256  # jobs in one forward
    max_queue: int = 4096  # jobs waiting or running before AtCapacity
    batch_wait_s: float = 0.0  # wait this long for a fuller batch when not full (0: never)
    prefill_chunk: int = 64  # ids of one job fed per pass at most


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    tokens: int = 0  # ids fed into states
    words: int = 0  # words generated
    observers: list[Observer] = field(default_factory=list)

    def record(
        self, rows: int, tokens: int, words: int, firsts: list[float], gaps: list[float]
    ) -> None:
        self.batches += 1
        self.rows += rows
        self.tokens += tokens
        self.words += words
        for observe in self.observers:
            observe(rows, tokens, words, firsts, gaps)


class Engine:
    """One model's engine: `open` sequences on it (app.engine.sequences: step, generate,
    export, close), `start` its loop and `stop` it; `failure` says why it stopped serving."""

    def __init__(
        self,
        model: HumanNumbersLM,
        vocab: Vocab,
        device: torch.device,
        config: EngineConfig | None = None,
        name: str = "model",
    ):
        self.name = name
        self.model = model
        self.vocab = vocab
        self.device = device
        self.config = config or EngineConfig()
        self.spec: dict[str, StateSpec] = model.state_spec
        # A sequence starts after an implicit xxbos, as every text the model was trained on
        # (model_store.start_state): new, reset and reused rows all read as this state. A
        # vocabulary without one (not fastai's) starts at the zero state.
        bos = vocab.stoi.get(BOS)
        start = model.init_state(1, device) if bos is None else start_state(model, bos, device)
        self._pool = SlotPool(self.spec, device, zero=start)
        self.zero_export = ExportedState.pack(self._pool.zero_state, self.spec)
        self.layout = (self.zero_export.dtype, self.zero_export.shape)  # texts of its layout
        self.stats = BatchStats()
        # Tokens a user cannot type (fastai's special tokens, the filler) are never predicted.
        self._banned = torch.tensor(vocab.unpredictable, dtype=torch.long).to(device)
        banned = set(vocab.unpredictable)  # the same, a byte a word, for the model's own pass
        self._banned_bytes = bytes(i in banned for i in range(model.config.vocab_size))
        self._queue: deque[Job] = deque()
        self._has_work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: list[Job] = []  # the batch of the pass under way
        self._closed = False
        self._failure: str | None = None  # why the loop stopped, if it ever does
        self._host = Host(name, self._pool, vocab.itos, self._enqueue)

    # -- health ----------------------------------------------------------------------------
    @property
    def failure(self) -> str | None:
        """Why the engine stopped serving, if it did (its loop died): it then refuses every
        request with NotReady, and /ready says so."""
        return self._failure

    def observe(self, observer: Observer) -> None:
        """Tell `observer` of every pass (see `Observer`)."""
        self.stats.observers.append(observer)

    @property
    def queued(self) -> int:
        """Jobs waiting or running."""
        return len(self._queue) + len(self._running)

    def jobs(self) -> tuple[int, int]:
        """(running, waiting): jobs a pass took that go on (a generation between its words,
        a long text between its pieces), and jobs queued that no pass took yet. A walk of the
        queue, for the metrics at scrape time. A pass never yields to the event loop, so
        whenever anyone else looks, the queue holds every job under way."""
        running = waiting = 0
        for job in self._queue:
            if job.future.done():  # its caller left: dropped by the next pass
                continue
            if job.ran:
                running += 1
            else:
                waiting += 1
        return running, waiting

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        assert self._task is None, "engine already started"
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"engine-{self.name}"
        )
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The loop ended: on purpose (stop), or it died. Either way nobody waits forever."""
        if not self._closed:
            why = "it was cancelled" if task.cancelled() else describe(task.exception())  # type: ignore[arg-type]
            self._failure = f"the engine of model {self.name!r} stopped ({why})"
            log.error("%s", self._failure, exc_info=None if task.cancelled() else task.exception())
        self._fail_all(NotReady(self._failure or "the server is shutting down"))

    def _fail_all(self, error: Exception) -> None:
        for job in [*self._running, *self._queue]:
            fail(job, error)
        self._running = []
        self._queue.clear()

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # however it ended, it raises nothing here
        self._fail_all(NotReady("the server is shutting down"))

    # -- sequences -------------------------------------------------------------------------
    def open(self, saved: ExportedState | None = None) -> Sequence:
        """A new sequence at the start state (model_store.start_state), or at an exported one
        (LayoutMismatch if it does not fit this model's layout: nothing is opened then)."""
        state = saved.unpack(self.spec) if saved is not None else None
        row = self._pool.alloc()
        if state is not None:
            self._pool.write(row, state)
        return Sequence(self._host, row)

    @property
    def open_sequences(self) -> int:
        return self._pool.in_use

    def _enqueue(self, job: Job, reserved: bool) -> None:
        """Queue a job of one of this engine's sequences; its future resolves with the answer
        (None for a generation, whose words are in `job.gen`). A `reserved` job takes the
        place of one of its request's that just ended, so a full queue does not refuse it."""
        if self._failure is not None:
            raise NotReady(self._failure)
        if self._closed:
            raise NotReady("the server is shutting down")
        if len(self._queue) >= self.config.max_queue and not reserved:
            raise AtCapacity(
                f"the server is at capacity ({len(self._queue)} jobs queued): retry shortly"
            )
        job.at = time.perf_counter()
        self._queue.append(job)
        self._has_work.set()

    # -- the loop --------------------------------------------------------------------------
    async def _loop(self) -> None:
        cfg = self.config
        while True:
            await self._has_work.wait()
            if cfg.batch_wait_s and len(self._queue) < cfg.max_batch:
                await asyncio.sleep(cfg.batch_wait_s)
            batch: list[Job] = []
            while self._queue and len(batch) < cfg.max_batch:
                job = self._queue.popleft()
                if job.future.done():  # a cancelled caller's job is dropped, never applied
                    continue
                if job.seq.closed:  # its row may be another sequence's by now
                    fail(job, SequenceClosed("the sequence was closed before its job ran"))
                    continue
                batch.append(job)
            if batch:
                self._running = batch
                if tracing.tracer is not None:  # each job's span: its queue time, its batch
                    traced(batch)
                try:
                    self._run(batch)
                except Exception as e:  # a bug of ours: fail this batch, keep serving
                    log.exception("a batch of model %r failed", self.name)
                    for job in batch:
                        fail(
                            job, EngineFailure(f"the model failed on this request ({describe(e)})")
                        )
                self._running = []
            if not self._queue:
                self._has_work.clear()
            await asyncio.sleep(0)  # let the resolved callers run and new jobs arrive

    def _run(self, batch: list[Job]) -> None:
        try:
            rows, tokens = self._forward(batch)
        except Exception as e:
            if len(batch) > 1:  # find the culprit: each job alone (no state was changed)
                for job in batch:
                    self._run([job])
                return
            log.exception("model %r failed on a request", self.name)
            fail(batch[0], EngineFailure(f"the model failed on this request ({describe(e)})"))
            return
        now = time.perf_counter()  # when this pass's words came, all of them
        firsts: list[float] = []  # times to first word
        gaps: list[float] = []  # times since the previous word
        words = 0
        for job, row in zip(batch, rows, strict=True):
            job.ran = True
            if row is not None and not job.future.done():
                try:
                    words += self._advance(job, row, now, firsts, gaps)
                except Exception as e:  # e.g. a caller's callback: that job fails alone
                    log.exception("model %r failed to finish a request", self.name)
                    fail(job, EngineFailure(f"the request failed ({describe(e)})"))
            if not job.future.done():
                self._queue.append(job)  # more to feed or generate: the next pass
        self.stats.record(len(batch), tokens, words, firsts, gaps)

    def _advance(
        self, job: Job, row: Row, now: float, firsts: list[float], gaps: list[float]
    ) -> int:
        """A job whose ids are all fed, with its next-word distribution (or, for a greedy
        generation, its likeliest word), in the pass that ended at `now`: answer or go on,
        its time to first word or since its previous word told. How many words it generated
        (0 or 1: a prompt's word scored is none)."""
        gen = job.gen
        if gen is None:  # a step: its row is its top words
            if job.timed:
                firsts.append(now - job.at)
            job.future.set_result(row)
            return 0
        if gen.finish is not None:  # that was the last word being fed
            job.future.set_result(None)
            return 0
        if isinstance(row, tuple):  # greedy: past the forced words
            word, prob = row
            scored = False
        else:
            scored = gen.scoring()  # a prompt's word, "chosen" as given: not generated
            dist = cast(list[float], row)  # a generation's row
            word = gen.choose(dist)
            prob = dist[word]
        if not scored:
            if job.last:
                gaps.append(now - job.last)
            else:
                firsts.append(now - job.at)
            job.last = now
        if gen.stops(word):
            job.future.set_result(None)
            return 0
        if gen.take(word, prob):
            job.feed = [word]
        else:
            job.future.set_result(None)
        return 0 if scored else 1

    def _forward(self, batch: list[Job]) -> tuple[list[Row | None], int]:
        """One batched forward: gather, advance, scatter. For each job whose ids are all fed
        now, its next-word probabilities, or its likeliest word and its probability if it
        generates greedily (None for a job with more to feed); the ids fed."""
        if (answered := self._forward_in_pool(batch)) is not None:
            return answered, len(batch)
        with torch.inference_mode():
            return self._forward_torch(batch)

    def _forward_torch(self, batch: list[Job]) -> tuple[list[Row | None], int]:
        """`_forward`'s gather, advance, head and scatter, in torch."""
        at = [j.seq.row for j in batch]
        assert len(set(at)) == len(at), "a sequence appears twice in a batch"
        chunk = self.config.prefill_chunk
        pieces = [job.feed[:chunk] for job in batch]  # job.feed shrinks once the states hold them
        # (dtype given: torch.tensor infers it from the list otherwise, at 2x the cost)
        slots = torch.as_tensor(at, dtype=torch.long, device=self.device)
        state = self._pool.gather(slots)  # each part (B, *shape); pending resets done first
        width = max(len(p) for p in pieces)
        if width:
            fed = [i for i, p in enumerate(pieces) if p]
            x = torch.tensor(
                [p + [0] * (width - len(p)) for p in pieces if p],
                dtype=torch.long,
                device=self.device,
            )
            ragged = len(fed) < len(batch) or any(len(pieces[i]) != width for i in fed)
            lengths = torch.tensor([len(pieces[i]) for i in fed]) if ragged else None
            if len(fed) == len(batch):
                state = self.model.advance_state(x, state, lengths)
            else:
                rows = torch.as_tensor(fed, dtype=torch.long, device=self.device)
                new = self.model.advance_state(
                    x, {name: part[rows] for name, part in state.items()}, lengths
                )
                state = {name: part.index_copy(0, rows, new[name]) for name, part in state.items()}
        nexts: list[Row] = []
        if done := [i for i, job in enumerate(batch) if len(job.feed) <= chunk]:
            head = state
            if len(done) < len(batch):
                index = torch.as_tensor(done, dtype=torch.long, device=self.device)
                head = {name: part.index_select(0, index) for name, part in state.items()}
            logits = self.model.head_state(head)
            probs = next_probs(logits, self._banned, self._banned_bytes)
            nexts = self._rows(probs, [batch[i] for i in done])
        if width:
            self._pool.scatter(slots, state)  # nothing changes before this line
        for job, piece in zip(batch, pieces, strict=True):
            job.feed = job.feed[len(piece) :]
            if piece and job.on_applied is not None:
                try:
                    job.on_applied(piece)
                except Exception as e:  # the state holds the piece; the caller failed
                    log.exception("model %r: a request's bookkeeping failed", self.name)
                    fail(job, EngineFailure(f"the request failed ({describe(e)})"))
        out: list[Row | None] = [None] * len(batch)
        for i, row in zip(done, nexts, strict=True):
            out[i] = row
        return out, sum(len(p) for p in pieces)

    def _forward_in_pool(self, batch: list[Job]) -> list[Row | None] | None:
        """The model's own pass in the pool (`step_in_pool`: gru-copy's C step), where every
        job is a step feeding one id, the most common pass of a busy server (a session's next
        word, a word at a time): each job's top words; None where the model has none for this
        batch, and nothing was done."""
        if len(batch) >= self.model.pool_rows:
            return None
        slots, x, top = [], [], []
        for job in batch:
            if job.gen is not None or len(job.feed) != 1:
                return None
            slots.append(job.seq.row)
            x.append(job.feed[0])
            top.append(job.top_k)
        self._pool.flush()  # pending rows reset first, as a gather does
        rows = self.model.step_in_pool(self._pool.parts, slots, x, top, self._banned_bytes)
        if rows is None:
            return None
        for job in batch:
            piece, job.feed = job.feed, []
            if job.on_applied is not None:
                try:
                    job.on_applied(piece)
                except Exception as e:  # the state holds the piece; the caller failed
                    log.exception("model %r: a request's bookkeeping failed", self.name)
                    fail(job, EngineFailure(f"the request failed ({describe(e)})"))
        return cast(list[Row | None], rows)

    @staticmethod
    def _rows(probs: torch.Tensor, jobs: list[Job]) -> list[Row]:
        """Each job's row: a step's `top_k` likeliest words (id, prob); a greedy generation's
        likeliest word and its prob; another generation's whole distribution as a list.
        Batched: one sort for all the steps, one argmax for the greedy ones, instead of a
        Python sort or max over each row."""
        steps: list[int] = []
        greedy: list[int] = []
        whole: list[int] = []
        for r, job in enumerate(jobs):
            (steps if job.gen is None else greedy if job.gen.greedy() else whole).append(r)
        out: list[Row] = [[] for _ in jobs]
        if steps:
            for r, top in zip(
                steps, top_rows(probs, steps, [jobs[r].top_k for r in steps]), strict=True
            ):
                out[r] = top
        if greedy:
            best_p, best = (probs if len(greedy) == len(jobs) else probs[greedy]).max(dim=-1)
            for r, pick in zip(
                greedy, zip(best.tolist(), best_p.tolist(), strict=True), strict=True
            ):
                out[r] = pick
        if whole:
            rows = probs.tolist()
            for r in whole:
                out[r] = rows[r]
        return out


def top_rows(probs: torch.Tensor, rows: list[int], ks: list[int]) -> list[list[tuple[int, float]]]:
    """`sampling.top_words` of rows `rows` of `probs` (B, V), the `ks[i]` likeliest of row
    `rows[i]`, in one sort: the same words in the same order (a tie to the higher id, as
    Python's sort of (prob, id) pairs gives, hence the flip and the stable sort) and the same
    floats; impossible words (prob 0) left out."""
    sub = probs if len(rows) == probs.shape[0] else probs[rows]
    k, last = max(ks), probs.shape[1] - 1
    values, index = torch.sort(sub.flip(1), dim=1, descending=True, stable=True)
    flipped, ps = index[:, :k].tolist(), values[:, :k].tolist()
    return [
        [(last - i, p) for i, p in zip(row_ids[:n], row_ps[:n], strict=True) if p > 0]
        for row_ids, row_ps, n in zip(flipped, ps, ks, strict=True)
    ]


def traced(batch: list[Job]) -> None:
    """Tell the batch's traced jobs of the pass about to run."""
    began, rows = time.perf_counter(), len(batch)
    for job in batch:
        if job.trace is not None:
            job.trace.passed(began, rows)


def fail(job: Job, error: Exception) -> None:
    if not job.future.done():  # a cancelled caller's future takes nothing
        job.future.set_exception(error)
