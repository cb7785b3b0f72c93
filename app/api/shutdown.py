"""What a request still running at the end of the drain hears.

On SIGTERM the server stops accepting, and the requests in flight get DRAIN_SECONDS to
finish; then uvicorn cancels them, and would answer the ones with no response yet with a plain
text 500, and cut streams without their last event. Here instead: a JSON 503 with Retry-After
(in OpenAI's error shape on its routes), and a stream ends with an error event (`data:
{"error": ...}`; on OpenAI's routes its error object, then `data: [DONE]`), so clients know
to retry elsewhere. Nothing else cancels a request's task: a cancellation that reaches this
middleware is the server's.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, is_openai, openai_error, send_response
from app.api.sse import DONE, event

MESSAGE = (
    "the server is shutting down and could not finish this request; "
    "retry it (another replica may take it)"
)


def shutdown_answer(openai: bool) -> Response:
    """The 503 of a request that has no answer yet when the drain ends."""
    headers = {"Retry-After": "1", "Connection": "close"}
    return error_response(503, MESSAGE, openai=openai, headers=headers)


class ShutdownAnswers:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        stream = False

        async def watch(message: Message) -> None:
            nonlocal started, stream
            if message["type"] == "http.response.start":
                started = True
                stream = any(
                    key == b"content-type" and value.startswith(b"text/event-stream")
                    for key, value in message.get("headers", ())
                )
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            openai = is_openai(scope["path"])
            with contextlib.suppress(Exception):  # the client may be gone: nothing to say
                if not started:
                    await send_response(send, shutdown_answer(openai))
                elif stream:
                    error = openai_error(503, MESSAGE)
                    last = event({"error": error}) + DONE if openai else event({"error": MESSAGE})
                    await send({"type": "http.response.body", "body": last, "more_body": False})
            # a plain response already half sent has nothing more to say: the connection closes
