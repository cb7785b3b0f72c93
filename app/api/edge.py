"""Bounds on what a request may make the server read, checked before any route sees it.

A body larger than MAX_BODY_BYTES gets 413 before a byte of it is parsed: from its
Content-Length header alone (a lookup, on the hot routes too), or, for a chunked body,
counted as it arrives. A body must arrive within BODY_TIMEOUT_SECONDS (408 otherwise), so a
client that sends its body slowly cannot hold a request open. Headers larger than
MAX_HEADER_BYTES in all get 431.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, send_response


class BoundedRequests:
    def __init__(self, app: ASGIApp, max_body: int, body_timeout_s: float, max_headers: int):
        self.app = app
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        chunked = False
        size = 0
        for key, value in scope["headers"]:
            size += len(key) + len(value)
            if key == b"content-length":
                length = value
            elif key == b"transfer-encoding":
                chunked = True
        if size > self.max_headers:
            await refuse(
                send,
                431,
                f"request headers are {size:,} bytes; this server takes "
                f"at most {self.max_headers:,} (MAX_HEADER_BYTES)",
            )
            return
        if length is not None:
            if int(length) > self.max_body:  # the server refuses a non-numeric length itself
                await self.too_large(send, int(length), counted=False)
                return
            if length == b"0":
                await self.app(scope, receive, send)
                return
        elif not chunked:  # no body
            await self.app(scope, receive, send)
            return
        # Read the body now, under a deadline and the size bound, then hand it on whole.
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client left: nobody to answer
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await self.too_large(send, size, counted=True)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await refuse(
                send,
                408,
                f"the request body took longer than {self.body_timeout_s:g} s "
                "to arrive (BODY_TIMEOUT_SECONDS)",
            )
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        await self.app(scope, replay(body, receive), send)

    async def too_large(self, send: Send, size: int, counted: bool) -> None:
        """413: `size` is the Content-Length, or what a chunked body had sent when it went
        past the limit (the rest is never read)."""
        said = (
            f"at least {size:,} bytes (chunked, refused as it arrived)"
            if counted
            else (f"{size:,} bytes")
        )
        await refuse(
            send,
            413,
            f"request body is {said}; this server takes at most "
            f"{self.max_body:,} bytes (MAX_BODY_BYTES)",
        )


async def refuse(send: Send, status: int, detail: str) -> None:
    """Answer `status` with a JSON detail and close the connection (the rest of the request
    is never read)."""
    await send_response(send, error_response(status, detail, headers={"Connection": "close"}))


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
