"""The drain on SIGTERM, and what a request still running at its end hears.

On the first SIGTERM (or Ctrl+C) the server drains (`DrainingServer`, which `python -m app`
runs): `/ready` answers 503 at once, so load balancers and Kubernetes stop sending; a new
request gets a JSON 503 with Retry-After and `Connection: close` (nothing of it was done, so
a proxy may retry it elsewhere: the compose nginx does), except the probes and /metrics; the
requests in flight and open streams go on. Once none is left, or DRAIN_SECONDS after the
signal, the server stops listening and exits; a second signal ends the drain at once.

A request still running when the drain time is up is cancelled by uvicorn, which would answer
one with no response yet with a plain text 500, and cut a stream without its last event. Here
instead: a JSON 503 with Retry-After (in OpenAI's error shape on its routes), and a stream ends
with an error event (`data: {"error": ...}`; on OpenAI's routes its error object, then `data:
[DONE]`), so clients know to retry elsewhere. Nothing else cancels a request's task: a
cancellation that reaches this middleware is the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import FrameType

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, is_openai, openai_error, send_response
from app.api.sse import DONE, event

log = logging.getLogger("app")
MESSAGE = (
    "the server is shutting down and could not finish this request; "
    "retry it (another replica may take it)"
)
DRAINING = "the server is shutting down (draining); retry the request (another replica takes it)"
PROBES = frozenset({"/health", "/ready", "/metrics"})  # answered while draining


class Drain:
    """The process's drain: whether it is under way, and the requests in flight (counted by
    the app around every HTTP request, streams until their last event)."""

    __slots__ = ("inflight", "since")

    def __init__(self) -> None:
        self.inflight = 0
        self.since: float | None = None  # monotonic time of the signal

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def elapsed(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining before it shuts down. uvicorn alone stops listening at the
    signal: a probe then gets no answer rather than 503, and the proxy in front cannot tell a
    replica going away from one that is down."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float):
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s
        self.announced = False  # the drain's start logged

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:  # a second signal: what runs is cut now (503s, error events)
            self.config.timeout_graceful_shutdown = 0  # (a third Ctrl+C: exit at once)
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised at the end, as uvicorn does
        # /ready says 503 from now on (the signal runs on the loop's thread). Nothing else
        # here: a handler that logged could block on a lock the interrupted code holds.
        self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self.should_exit:
            if not self.announced:
                self.announced = True
                log.info(
                    "draining: %d requests in flight, at most %.1f s",
                    self.drain.inflight,
                    self.drain_s,
                )
            elapsed = self.drain.elapsed()
            if self.drain.inflight == 0 or elapsed >= self.drain_s:
                # uvicorn's shutdown: stop listening, close idle connections, give what is
                # left of the drain to what still runs, then cancel it (the 503s below)
                self.config.timeout_graceful_shutdown = max(0, int(self.drain_s - elapsed))
                self.should_exit = True
                log.info("drained: %d requests still in flight", self.drain.inflight)
        return await super().on_tick(counter)


RETRY_ELSEWHERE = {"Retry-After": "1", "Connection": "close"}  # the headers of both 503s


def shutdown_answer(openai: bool) -> Response:
    """The 503 of a request that has no answer yet when the drain ends."""
    return error_response(503, MESSAGE, openai=openai, headers=RETRY_ELSEWHERE)


def draining_answer(openai: bool) -> Response:
    """The 503 of a request that arrives while the server drains: nothing of it was done."""
    return error_response(503, DRAINING, openai=openai, headers=RETRY_ELSEWHERE)


class ShutdownAnswers:
    def __init__(self, app: ASGIApp, drain: Drain):
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in PROBES:
            await send_response(send, draining_answer(is_openai(scope["path"])))
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
