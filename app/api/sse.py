"""The one Server-Sent Events writer of word streams (/v1/continuation, the session
continuation, /v1/completions): fast, and exact when the client leaves.

Producers (the engine's per-word callback, a job's end) only call `wake()`: no queue item, no
task switch, no Python object per word. The response's one coroutine then asks its source for
every event ready, already encoded as bytes, and sends them in one body chunk. Sends are spaced
at least `flush_s` apart (SSE_FLUSH_MS): a word that comes sooner waits for the next send, with
the other words of its stream, so under load a write carries several events (still one event
per word) instead of a socket write per word; the first words, the end of a stream and a quiet
server are never held back. A socket write per event was half the CPU time of 256 streams.

The client leaving is heard at once (a task reads the ASGI `receive` channel), and the source
is told to stop now (`leave`): it cancels its generation, and keeps what `delivered()`
confirmed, the events of every send that returned, and nothing more. A client that stays but
does not read is treated the same once a send has waited `write_timeout_s`
(STREAM_WRITE_TIMEOUT_SECONDS) for room: the stream ends there, without its last event, and
the connection is closed, so what the stream held is freed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

# Proxies must not buffer the stream (nginx honours X-Accel-Buffering).
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"
log = logging.getLogger("app.sse")


def event(data: object) -> bytes:
    """One Server-Sent Event carrying `data` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


class EventSource(Protocol):
    """What a stream sends: its producer calls the stream's `wake()` when events are ready
    (`finish()` at its end), and the stream renders them when it writes next."""

    def render(self) -> tuple[bytes, bool]:
        """The events ready since the last render, encoded; whether the stream ends with them."""

    def delivered(self) -> None:
        """The events of the last render went out (the send returned)."""

    def leave(self) -> None:
        """The client left: stop producing now (called once, from the disconnect)."""

    async def close(self) -> None:
        """The end, whatever happened (called once, last): release what the stream held."""


class EventStream(Response):
    """ASGI response: writes what its source renders each time it is woken, at most once per
    `flush_s` seconds, until the source says it is done or the client leaves."""

    media_type = "text/event-stream"

    def __init__(self, flush_s: float = 0.0, write_timeout_s: float | None = None):
        self.status_code = 200
        self.write_timeout_s = write_timeout_s
        self.background: BackgroundTask | None = None
        self.source: EventSource | None = None
        self.flush_s = flush_s
        self.gone = False  # the client left
        self._ready = True  # something to render (the first pass always looks)
        self._due = False  # a wake is waiting for the flush interval to pass
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # when the last send went out (loop time)
        self._loop = asyncio.get_running_loop()

    # -- the producers' side (synchronous, cheap) -------------------------------------------
    def wake(self, *_: object) -> None:
        """Events are ready: the next send takes them (it accepts the engine's per-word call's
        arguments, unused)."""
        if self._ready or self._due:
            return
        at = self._last + self.flush_s
        if at > self._loop.time():
            self._due = True
            self._timer = self._loop.call_at(at, self._go)
        else:
            self._go()

    def finish(self) -> None:
        """The stream's end is ready: send it now, without waiting for the interval."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._go()

    def _go(self) -> None:
        self._timer = None
        self._due = False
        self._ready = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if not self._ready:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._ready = False

    # -- the client's side -------------------------------------------------------------------
    def _left(self) -> None:
        if not self.gone:
            self.gone = True
            assert self.source is not None
            self.source.leave()
            self.finish()

    async def _watch(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self._left()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = self.source
        assert source is not None, "an EventStream needs its source before it is sent"
        watcher = self._loop.create_task(self._watch(receive))
        try:
            headers = list(SSE_HEADERS)  # a copy: a middleware (CORS) may add to the list
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while not self.gone:
                await self._wait()
                if self.gone:
                    break
                # uvicorn's send to a client already gone returns quietly, and the watcher
                # hears of it on the loop's next turn: let it, before a send that will count
                await asyncio.sleep(0)
                if self.gone:
                    break
                data, finished = source.render()
                if data or finished:
                    try:
                        async with asyncio.timeout(self.write_timeout_s):
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": data,
                                    "more_body": not finished,
                                }
                            )
                    except TimeoutError:  # the client does not read: end it as if it left
                        log.warning(
                            "a stream's client read nothing for %g s "
                            "(STREAM_WRITE_TIMEOUT_SECONDS): stream ended",
                            self.write_timeout_s,
                        )
                        self._left()
                        break
                    self._last = self._loop.time()
                    if not self.gone:  # else it left while the send waited: nothing went out
                        source.delivered()
                if finished:
                    break
        except OSError:  # the server says the client left (uvicorn's ClientDisconnected)
            self._left()
        finally:
            watcher.cancel()
            if self._timer is not None:
                self._timer.cancel()
            await source.close()
        if self.background is not None:
            await self.background()
