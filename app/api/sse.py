"""A lean Server-Sent Events response for word streams.

Producers (the engine's per-word callbacks, a job's completion) only call `wake()`: no queue
item, no task switch per word. The response's one coroutine then renders every event that is
ready, already encoded as bytes, and sends them in one body chunk: one event per word still,
but the words of a stream that came while it waited (several batch passes under load) go out
in one write. Starlette's StreamingResponse spent an async-generator step, a queue hop and an
anyio task group per word; here a word costs a callback and a share of one send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

# Proxies must not buffer the stream (nginx honours X-Accel-Buffering).
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

Render = Callable[[], tuple[bytes, bool]]  # the events ready now, and whether that is all


class EventStream(Response):
    """ASGI response: sends what `render()` gives each time it is woken, until it says done;
    `on_close` runs at the end whatever happened (the client gone included)."""

    media_type = "text/event-stream"

    def __init__(self, on_close: Callable[[], Awaitable[None]] | None = None):
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.render_events: Render = lambda: (b"", True)
        self.on_close = on_close
        self._dirty = True
        self._waiter: asyncio.Future[None] | None = None
        self._gone = False

    def wake(self) -> None:
        self._dirty = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until woken (at once if woken since the last render)."""
        if not self._dirty:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._dirty = False

    async def _watch(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                self.wake()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            while True:
                await self.wait()
                if self._gone:
                    return
                data, finished = self.render_events()
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                if finished:
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            if self.on_close is not None:
                await self.on_close()
        if self.background is not None:
            await self.background()
