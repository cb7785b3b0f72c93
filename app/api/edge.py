"""Bounds on what a request may make the server read, checked before any route sees it.

A body larger than MAX_BODY_BYTES gets 413 before a byte of it is parsed: from its
Content-Length header alone (a lookup, on the hot routes too), or, for a chunked body,
counted as it arrives. A body must arrive within BODY_TIMEOUT_SECONDS (408 otherwise), so a
client that sends its body slowly cannot hold a request open. Headers larger than
MAX_HEADER_BYTES in all get 431. The checks are functions that the fast path (app.api.fastpath)
calls too, so both answer alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, send_response


@dataclass(frozen=True, slots=True)
class Head:
    """What the bounds read of a request's head: its headers' size in all, its Content-Length
    and whether its body is chunked."""

    size: int
    length: bytes | None
    chunked: bool

    @classmethod
    def read(cls, headers: Iterable[tuple[bytes, bytes]]) -> Head:
        size, length, chunked = 0, None, False
        for key, value in headers:
            size += len(key) + len(value)
            if key == b"content-length":
                length = value
            elif key == b"transfer-encoding":
                chunked = True
        return cls(size, length, chunked)

    @property
    def has_body(self) -> bool:
        return self.length != b"0" and (self.length is not None or self.chunked)

    def refusal(self, max_headers: int, max_body: int) -> Response | None:
        """431 for headers over `max_headers` bytes in all, 413 for a Content-Length over
        `max_body`; None when neither."""
        if self.size > max_headers:
            return refusal(
                431,
                f"request headers are {self.size:,} bytes; this server takes "
                f"at most {max_headers:,} (MAX_HEADER_BYTES)",
            )
        length = self.length
        if length is not None and int(length) > max_body:  # the server refuses a non-numeric one
            return too_large(int(length), max_body, counted=False)
        return None


def refusal(status: int, detail: str) -> Response:
    """`status` with a JSON detail, closing the connection (the rest is never read)."""
    return error_response(status, detail, headers={"Connection": "close"})


def too_large(size: int, max_body: int, counted: bool) -> Response:
    """413: `size` is the Content-Length, or what a chunked body had sent when it went past
    the limit (the rest is never read)."""
    said = (
        f"at least {size:,} bytes (chunked, refused as it arrived)"
        if counted
        else f"{size:,} bytes"
    )
    return refusal(
        413,
        f"request body is {said}; this server takes at most {max_body:,} bytes (MAX_BODY_BYTES)",
    )


class BodyDeadlines:
    """The deadline of every request body being read (BODY_TIMEOUT_SECONDS), kept in a dict
    and checked by one task every TICK_S, instead of a timer per request: asyncio.timeout
    makes a Timeout and schedules and cancels a timer handle for each one, 4% of a hot
    request's CPU. A read past its deadline is cancelled, as asyncio.timeout does, within
    TICK_S of it; `read` turns that into the 408. One per app; its task runs on the loop that
    reads, while bodies are being read."""

    TICK_S = 0.1

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.reading: dict[asyncio.Task[Any], float] = {}  # task: its deadline (loop time)
        self.late: set[asyncio.Task[Any]] = set()  # cancelled by the ticker, not yet told
        self.ticker: asyncio.Task[None] | None = None

    async def read(self, receive: Receive, max_body: int) -> bytes | Response | None:
        """The whole body, read under the deadline and the size bound; the refusal (413,
        408) when it breaks one; None when the client left (nobody to answer)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self.reading[task] = loop.time() + self.timeout_s
        ticker = self.ticker
        if ticker is None or ticker.done() or ticker.get_loop() is not loop:
            self.ticker = loop.create_task(self._tick(loop))
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_body:
                    return too_large(size, max_body, counted=True)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if task not in self.late:
                raise
            self.late.discard(task)
            if task.uncancel() > 0:  # cancelled from elsewhere too (a shutdown): that wins
                raise
            return refusal(
                408,
                f"the request body took longer than {self.timeout_s:g} s to arrive "
                "(BODY_TIMEOUT_SECONDS)",
            )
        finally:
            self.reading.pop(task, None)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        while self.reading:
            await asyncio.sleep(self.TICK_S)
            now = loop.time()
            for task, deadline in list(self.reading.items()):
                if deadline <= now:
                    del self.reading[task]
                    self.late.add(task)
                    task.cancel()


class BoundedRequests:
    def __init__(self, app: ASGIApp, max_body: int, deadlines: BodyDeadlines, max_headers: int):
        self.app = app
        self.max_body = max_body
        self.deadlines = deadlines
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = Head.read(scope["headers"])
        if (refused := head.refusal(self.max_headers, self.max_body)) is not None:
            await send_response(send, refused)
            return
        if not head.has_body:
            await self.app(scope, receive, send)
            return
        # Read the body now, under a deadline and the size bound, then hand it on whole.
        body = await self.deadlines.read(receive, self.max_body)
        if isinstance(body, Response):
            await send_response(send, body)
        elif body is not None:
            await self.app(scope, replay(body, receive), send)


async def read_body(receive: Receive) -> bytes:
    """The request's body, which BoundedRequests has read whole already: one message."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def replay(body: bytes, rest: Receive) -> Receive:
    """A receive that gives the whole `body` first, then what `rest` has (a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await rest()

    return receive
