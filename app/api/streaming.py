"""Continuation streams: one event per word, `data: {"word": ..., "prob": ...}`, then
`data: {"finish_reason": ...}`, written by the one SSE writer (app.api.sse)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from app.api.sse import EventStream, event
from app.core.errors import ServiceError
from app.engine.generation import Generation
from app.schemas.predict import ContinuationResponse


@functools.lru_cache(maxsize=64)
def word_prefixes(itos: tuple[str, ...]) -> list[bytes]:
    """Each word's event up to its probability: `data: {"word":"one","prob":`."""
    return [b'data: {"word":' + orjson.dumps(word) + b',"prob":' for word in itos]


class WordEvents:
    """A continuation's words on their way to the client. The service's `Delivery`: it is
    shown the generation (`watch`) and reads its words as the engine appends them, and it
    counts the words sent. The stream's source: it renders them, and the end."""

    def __init__(self, stream: EventStream):
        self.stream = stream
        self.gen: Generation | None = None
        self.prefixes: list[bytes] = []
        self.task: asyncio.Task[ContinuationResponse] | None = None
        self.sent = 0  # words the client was sent (their send returned)
        self._rendered = 0  # words handed to the last send
        self._finished = False  # the end was rendered
        self._drained: asyncio.Future[None] | None = None
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the service's side ------------------------------------------------------------------
    def watch(self, itos: tuple[str, ...], gen: Generation) -> None:
        self.gen = gen
        self.prefixes = word_prefixes(itos)
        gen.on_word = self._first_word

    def _first_word(self, word: int, prob: float) -> None:
        assert self.gen is not None
        self.gen.on_word = self.stream.wake  # the next words only wake the stream
        if not self.first.done():
            self.first.set_result(None)
        self.stream.wake()

    async def drained(self) -> None:
        """Return once every word generated was sent."""
        if self.gen is None or self.sent >= len(self.gen.words):
            return
        self._drained = asyncio.get_running_loop().create_future()
        self.stream.finish()  # the generation is over: send the rest now
        await self._drained

    # -- the stream's side -------------------------------------------------------------------
    def render(self) -> tuple[bytes, bool]:
        out = []
        if (gen := self.gen) is not None:
            words, probs, prefixes = gen.words, gen.probs, self.prefixes
            n = len(words)
            for j in range(self._rendered, n):
                out.append(prefixes[words[j]] + orjson.dumps(probs[j]) + b"}\n\n")
            self._rendered = n
        task = self.task
        assert task is not None
        if task.done() and not task.cancelled():
            if (error := task.exception()) is not None:  # the status is sent: say it here
                detail = error.detail if isinstance(error, ServiceError) else "internal error"
                out.append(event({"error": detail}))
            else:
                out.append(event({"finish_reason": task.result().finish_reason}))
            self._finished = True
        return b"".join(out), self._finished

    def delivered(self) -> None:
        self.sent = self._rendered
        waiter = self._drained
        if waiter is not None and not waiter.done():
            assert self.gen is not None
            if self.sent >= len(self.gen.words):
                waiter.set_result(None)

    def leave(self) -> None:  # the client left: stop generating now
        self._stop()

    def _stop(self) -> None:
        """Cancel the continuation, once: a second cancel would cut short its clean-up."""
        task = self.task
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    async def close(self) -> None:
        """Wait for the continuation to end (a session keeps the words sent, no more)."""
        self._stop()
        if self.task is not None:
            await asyncio.wait([self.task])  # its outcome was rendered, or nobody reads it


async def event_stream(
    run: Callable[[WordEvents], Coroutine[Any, Any, ContinuationResponse]],
    flush_s: float,
    write_timeout_s: float | None = None,
) -> EventStream:
    """Run a continuation in a task of its own, and wait for its first word, so a request that
    fails validation gets its HTTP error status instead of a stream. If the client goes away,
    the task is cancelled at once (which releases the session, keeping the words sent); a
    stream never read still ends, as max_words is bounded."""
    stream = EventStream(flush_s, write_timeout_s)
    words = WordEvents(stream)
    stream.source = words
    task = asyncio.create_task(run(words))
    words.task = task

    def ended(_: object) -> None:
        if not words.first.done():
            words.first.set_result(None)
        stream.finish()

    task.add_done_callback(ended)
    try:
        await words.first
    except asyncio.CancelledError:
        task.cancel()
        raise
    no_word = words.gen is None or not words.gen.words
    if no_word and task.done() and not task.cancelled() and (error := task.exception()):
        raise error
    return stream
