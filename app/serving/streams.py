"""The one stream producer: a request's generations on their way to a client.

A stream (a continuation's, or a completion's with its choices) runs its generations and
tells the writer (app.api.sse) when words are ready (`listen`); the writer's renderer (our word
events, OpenAI's chunks: app.api.streaming) takes each choice's words once they are final
(`take`: a word a stop sequence may still take back waits), and confirms what went out
(`delivered`). A stream on a session holds the session's lease until it ends, and the session
keeps exactly what the client was sent: its text and the words delivered. If the client
leaves (`leave`), the generation stops at once; if it fails, the session is rewound to the
words delivered then too. The lease is given back before the stream's end is rendered, so
the client's next request finds the session as the stream left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from app.core.redact import session_tag
from app.engine.sequences import ExportedState
from app.serving.runs import Run
from app.serving.sessions import Lease, applied

log = logging.getLogger("app.streams")


def nothing(*_: object) -> None:
    pass


class Rewind:
    """A session as it was before a request, to come back to if a stream is cut short."""

    def __init__(self, lease: Lease):
        self.state: ExportedState = lease.seq.export()
        self.tokens_seen = lease.tokens_seen
        self.last_words = list(lease.last_words)

    async def keep(self, lease: Lease, feed: list[int]) -> None:
        """Back to the state before the request, then feed its text and the words sent
        (feeding in pieces or whole gives the same state: that is the engine's invariant)."""
        lease.reset()
        lease.seq.restore(self.state)
        lease.tokens_seen, lease.last_words = self.tokens_seen, self.last_words
        if not feed:
            return
        try:
            await lease.seq.step(feed, 1, applied(lease))
        except Exception as e:  # it keeps the state from before the request
            log.warning(
                "session %s: the words sent could not be kept: %s", session_tag(lease.id), e
            )


class GenerationStream:
    """Runs `run` (its choices) for a stream; with a lease (entered in `stack`, which the
    stream closes), its one choice continues the session."""

    def __init__(self, run: Run, stack: contextlib.AsyncExitStack | None = None):
        self.run = run
        run.on_end, run.on_word = self._ended, self._word
        self.prompts, self.choices, self.lease = run.prompts, run.choices, run.lease
        self.itos = run.engine.vocab.itos
        self.stack = stack or contextlib.AsyncExitStack()
        self.before = Rewind(run.lease) if run.lease is not None else None
        params = run.choices[0].params
        self.hold_chars = max((len(s) for s in params.stop_strings), default=1) - 1
        self.hold_words = max((len(s) - 1 for s in params.stop_words), default=0)
        self.rendered = [0] * len(run.choices)  # generated words handed to the writer, per choice
        self.delivered_words = 0  # the first choice's words the client was sent
        self.wake: Callable[..., None] = nothing
        self.finish: Callable[[], None] = nothing
        self.left = False
        self.failure: BaseException | None = None  # giving the session back failed
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()  # the first word, or the end
        self._drained: asyncio.Future[None] | None = None
        self._settle: asyncio.Task[None] | None = None

    # -- the serving layer's side ----------------------------------------------------------
    def start(self) -> None:
        """Start the generations (AtCapacity if the engine's queue is full: then nothing runs;
        the caller closes the stream)."""
        self.run.start()
        if self.lease is not None:
            self._settle = asyncio.get_running_loop().create_task(self._give_back())

    async def first(self) -> None:
        """Until the first word, or the end: a stream that fails before any word raises its
        error (closed by then), so the client gets an error status instead of a stream."""
        try:
            await asyncio.shield(self._first)
            gen = self.choices[0].gen
            if (gen is None or not gen.words) and (error := self.error) is not None:
                raise error
        except BaseException:
            await self.close()
            raise

    def _word(self, *_: object) -> None:
        if not self._first.done():
            self._first.set_result(None)
        self.wake()

    def _ended(self) -> None:
        if self.lease is None and not self._first.done():  # a session's: once given back
            self._first.set_result(None)
        self.finish()

    async def _give_back(self) -> None:
        """A session's stream: once its generation ends and every word went out, give the
        session back; if the client left or it failed, with the words sent and no more."""
        assert self.lease is not None and self.before is not None
        kept = False
        try:
            await self.run.finished.wait()
            if self.run.error is None:
                await self._drain()
                kept = True
        finally:
            try:
                if not kept:
                    c, prompt = self.choices[0], self.prompts[0]
                    words = c.gen.words if c.gen is not None else []
                    k = len(c.params.forced)
                    await self.before.keep(self.lease, prompt + words[k : k + self.delivered_words])
            finally:
                try:
                    await self.stack.aclose()
                except Exception as e:  # e.g. the store could not save it: the stream says so
                    log.warning("session %s: not given back: %s", session_tag(self.lease.id), e)
                    self.failure = e
                if not self._first.done():
                    self._first.set_result(None)
                self.finish()

    async def _drain(self) -> None:
        """Until every word of the (ended) generation went out."""
        if self.delivered_words >= self.final(0):
            return
        self._drained = asyncio.get_running_loop().create_future()
        self.finish()  # the generation is over: send the rest now
        await self._drained

    # -- the writer's side -------------------------------------------------------------------
    def listen(self, wake: Callable[..., None], finish: Callable[[], None]) -> None:
        """`wake` hears of every word (sent at the writer's pace), `finish` of every end
        (sent at once)."""
        self.wake, self.finish = wake, finish

    def final(self, i: int) -> int:
        """How many of choice i's generated words are final: all once it ended, else all but
        those a stop sequence or stop string may still take back."""
        c = self.choices[i]
        gen = c.gen
        if gen is None:
            return 0
        if c.done:
            return gen.n_generated()
        k = len(c.params.forced)
        final = max(0, len(gen.words) - k - self.hold_words)
        if self.hold_chars:  # the last words a stop string may still cut into
            chars, itos, words = 0, self.itos, gen.words
            while final > 0 and chars < self.hold_chars:
                final -= 1
                chars += 1 + len(itos[words[k + final]])
        return final

    def take(self, i: int) -> tuple[int, int]:
        """The generated words of choice i to render now: [start, end) (of `generated`)."""
        start, end = self.rendered[i], self.final(i)
        if end <= start:
            return start, start
        self.rendered[i] = end
        return start, end

    @property
    def settled(self) -> bool:
        """Whether the stream's end can be rendered: every choice ended, and a session's
        lease was given back."""
        if self._settle is not None:
            return self._settle.done()
        return self.run.finished.is_set() and all(c.done for c in self.choices)

    @property
    def error(self) -> BaseException | None:
        return self.run.error or self.failure

    def delivered(self) -> None:
        """What was taken so far went out."""
        self.delivered_words = self.rendered[0]
        waiter = self._drained
        if waiter is not None and not waiter.done() and self.delivered_words >= self.final(0):
            waiter.set_result(None)

    def leave(self) -> None:
        """The client left: stop generating now (a session keeps the words delivered)."""
        self.left = True
        self.run.release()
        self._stop()

    def _stop(self) -> None:
        task = self._settle
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    async def close(self) -> None:
        """The end, whatever happened: nothing runs any more, and a session is given back."""
        self.run.release()
        if self._settle is None:
            await self.stack.aclose()
            return
        self._stop()
        await asyncio.wait([self._settle])
