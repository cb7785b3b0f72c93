"""Server-Sent Events for continuations: one event per word, then the finish reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Send

from app.core.errors import ServiceError
from app.schemas.predict import ContinuationResponse


class WordQueue:
    """The words of a continuation on their way to the client: queued as the engine makes
    them, counted as they are sent (a `Delivery` for the service)."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()
        self.heard = 0
        self.sent = 0
        self.gone = False  # the client left: nothing more is sent nor counted
        self._drained = asyncio.Event()
        self._drained.set()

    def __call__(self, word: str, prob: float) -> None:
        self.heard += 1
        self._drained.clear()
        self.items.put_nowait((word, prob))

    def was_sent(self) -> None:
        if self.gone:
            return
        self.sent += 1
        if self.sent >= self.heard:
            self._drained.set()

    async def drained(self) -> None:
        await self._drained.wait()


async def event_stream(
    run: Callable[[WordQueue], Coroutine[Any, Any, ContinuationResponse]],
) -> StreamingResponse:
    """Run a continuation in a task of its own, its words queued as they come, and wait for
    the first word, so a request that fails validation gets its HTTP error status instead of
    a stream. If the client goes away, closing the stream cancels the task (which releases
    the session, keeping the words sent); a stream never read still ends, as max_words is
    bounded."""
    words = WordQueue()
    queue = words.items
    task = asyncio.create_task(run(words))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        first = await queue.get()
    except asyncio.CancelledError:
        task.cancel()
        raise
    if first is None and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]

    def leave() -> None:  # the client disconnected: stop generating now
        words.gone = True
        task.cancel()

    async def sse() -> AsyncIterator[bytes]:
        item = first
        try:
            while item is not None and not words.gone:
                yield event({"word": item[0], "prob": item[1]})
                words.was_sent()  # the server resumes us once the event went out
                item = await queue.get()
            if words.gone or task.cancelled():
                return
            if (error := task.exception()) is not None:  # the status is sent: say it here
                detail = error.detail if isinstance(error, ServiceError) else "internal error"
                yield event({"error": detail})
            else:
                yield event({"finish_reason": task.result().finish_reason})
        finally:
            task.cancel()

    return EventStream(sse(), leave)


class EventStream(StreamingResponse):
    """Tells the continuation at once when the client disconnects. Starlette's own way, an
    anyio cancellation of the sending task, is only delivered while that task waits, and a
    stream with words queued never waits: it went on generating to the end."""

    def __init__(self, content: AsyncIterator[bytes], on_disconnect: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_disconnect = on_disconnect

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.on_disconnect()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except OSError:  # ASGI 2.4 servers: a send to a client that left raises
            self.on_disconnect()
            raise


# Proxies must not buffer the stream (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, object]) -> bytes:
    """One Server-Sent Event carrying `data` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"
