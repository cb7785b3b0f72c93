"""`python -m app` on granian (SERVER=granian): the same app, drain and bounds as on uvicorn, as
far as granian allows.

Granian's embedded server runs on our own event loop (uvloop), so the drain is ours, as on
uvicorn (app.api.shutdown): on the first SIGTERM (or Ctrl+C) `/ready` answers 503 at once and
new requests get the drain's 503; once no request is in flight, or DRAIN_SECONDS after the
signal, the requests still running are cancelled (the app answers them 503, and a stream ends
with its error event), granian stops, the lifespan's shutdown runs, and the process ends by the
signal it got, as uvicorn's does. A second signal ends the drain at once.

The connection bounds are granian's own (its HTTP/1 server is hyper's), not
app.api.connections, which is uvicorn's protocol class:
- HEADER_TIMEOUT_SECONDS is hyper's header read timeout: a head that is late is cut off
  with no answer (no 408), and a connection idle between requests is closed after it too
  (uvicorn's keep-alive of 5 s does not apply).
- MAX_HEADER_BYTES is checked by the app (a JSON 431, as on uvicorn) for heads that fit
  granian's read buffer, which is MAX_HEADER_BYTES plus HEAD_SLACK bytes (at least hyper's
  8 KiB); a larger head gets hyper's own 431, with an empty body, as it arrives.
- MAX_CONNECTIONS is granian's backpressure: connections past it wait in the listen queue
  until one closes, instead of uvicorn's 503 and the slowest head closed to make room.
Proxy headers are read as uvicorn reads them (its middleware, FORWARDED_ALLOW_IPS).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import uvloop
from granian.constants import HTTPModes, Interfaces
from granian.errors import FatalError
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.api.shutdown import Drain
from app.core.config import Settings

log = logging.getLogger("app")
HEAD_SLACK = 4096  # the request line and line ends beyond the headers the app counts
MIN_BUFFER = 8192  # hyper's smallest read buffer
TICK_S = 0.1  # how often the drain looks at what is in flight (uvicorn's tick)
BACKLOG = 2048  # the listen queue, as uvicorn's


class RequestTasks:
    """The app, keeping the asyncio task of every HTTP request in flight: at the drain's end
    they are cancelled, as uvicorn cancels its own, so that app.api.shutdown's ShutdownAnswers
    answers them (granian would let them run on past the lifespan's shutdown)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task() if scope["type"] == "http" else None
        if task is None:
            await self.app(scope, receive, send)
            return
        self.tasks.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.tasks.discard(task)

    def cancel(self) -> int:
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)


class GranianDrain:
    """The signals' handling on granian: drain, then stop (the module's docstring)."""

    def __init__(self, server: Server, requests: RequestTasks, drain: Drain, drain_s: float):
        self.server = server
        self.requests = requests
        self.drain = drain
        self.drain_s = drain_s
        self.signals: list[int] = []  # re-raised once shut down, as uvicorn does
        self.waiting: asyncio.Task[None] | None = None

    def handle(self, sig: int) -> None:
        self.signals.append(sig)
        if self.drain.draining:  # a second signal: what runs is cut now (503s, error events)
            self._stop()
            return
        self.drain.begin()  # /ready says 503 from now on
        self.waiting = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> None:
        log.info(
            "draining: %d requests in flight, at most %.1f s", self.drain.inflight, self.drain_s
        )
        while self.drain.inflight > 0 and self.drain.elapsed() < self.drain_s:
            await asyncio.sleep(TICK_S)
        log.info("drained: %d requests still in flight", self.drain.inflight)
        self._stop()

    def _stop(self) -> None:
        self.requests.cancel()  # answered by ShutdownAnswers before granian stops
        if self.waiting is not None and self.waiting is not asyncio.current_task():
            self.waiting.cancel()
        asyncio.get_running_loop().call_soon(self.server.stop)


def build_server(settings: Settings, app: ASGIApp) -> Server:
    """Granian's embedded server for `app`, with the settings' bounds (module docstring)."""
    to_stderr = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return Server(
        app,
        address=settings.HOST,
        port=settings.PORT,
        interface=Interfaces.ASGI,  # with the lifespan: the app loads its models there
        http=HTTPModes.http1,  # as uvicorn: no HTTP/2, whose bounds are others
        websockets=False,
        backlog=BACKLOG,
        backpressure=settings.MAX_CONNECTIONS,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(settings.HEADER_TIMEOUT_SECONDS * 1000)),
            keep_alive=True,
            max_buffer_size=max(MIN_BUFFER, settings.MAX_HEADER_BYTES + HEAD_SLACK),
        ),
        log_level=LogLevels(settings.LOG_LEVEL),
        # granian's own lines on stderr, as uvicorn's (plain text); its access log off: the
        # app logs each request itself, as JSON
        log_dictconfig={
            "handlers": {
                "console": {**to_stderr, "formatter": "generic"},
                "access": {**to_stderr, "formatter": "access"},
            }
        },
        log_access=False,
    )


async def serve_async(settings: Settings, app: ASGIApp, drain: Drain) -> tuple[bool, list[int]]:
    """Serve until the drain ends: (whether granian's worker failed, the signals received)."""
    # the client's address from X-Forwarded-For when the peer is trusted, as uvicorn does
    # (proxy_headers on, FORWARDED_ALLOW_IPS, 127.0.0.1 by default): the access log, traces and
    # the per-address rate limit see the client behind a proxy on either server
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type]
    requests = RequestTasks(proxied)  # type: ignore[arg-type]  # uvicorn's own ASGI types
    server = build_server(settings, requests)
    stopping = GranianDrain(server, requests, drain, settings.DRAIN_SECONDS)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.handle, sig)
    try:
        await server.serve()
    except FatalError:  # the lifespan's start failed: granian has logged why
        return True, stopping.signals
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return bool(server.interrupt_children), stopping.signals


def serve(settings: Settings, app: ASGIApp, drain: Drain) -> int:
    """Run `app` on granian in this process (one worker: the engine batches in one process)
    until a signal's drain ends; the exit status (1 when the app could not start)."""
    failed, signals = uvloop.run(serve_async(settings, app, drain))
    if failed:
        return 1
    for sig in reversed(signals):  # end by the signal, as uvicorn does
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)
    return 0
