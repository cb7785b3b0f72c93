"""The connection layer: what uvicorn's httptools protocol lacks, so that no client can hold the
server's connections or make it buffer an endless request head.

- A deadline for the request head (HEADER_TIMEOUT_SECONDS): from the connection's start, or
  from the first byte of a later request on a kept-alive one, to the end of its headers.
  Past it: 408 and the connection closed (a connection that sent nothing is just closed).
- A cap on the head's size (MAX_HEADER_BYTES), counted in `data_received` as the bytes
  arrive, before httptools has buffered them all: past it, 431 and closed. (httptools keeps
  no limit of its own, and uvicorn joins a long URL or header piece by piece, which is
  quadratic: a 250 MB header line froze the loop for minutes.)
- A cap on open connections (MAX_CONNECTIONS, below the open-file limit): a connection past
  it first makes room by closing the one whose head has been arriving longest (503), or else
  the one idle longest (kept alive, or never sent a byte); when every connection is busy with
  a request, the new one gets 503 with Retry-After and is closed. Either way the file
  descriptors never run out, so clients beyond the cap are refused, not everyone.

- A response's head and body in one write (`CoalescedWrites`): uvicorn writes them apart, two
  system calls and two TCP segments for every response.
- One timer a connection for both its deadlines, the head's and the keep-alive's (uvicorn's
  `timeout_keep_alive`: an idle connection closed), moved lazily: a request only sets the
  deadline's time, and the timer, when it fires early, waits again for the time it finds.
  uvicorn and a timer per head schedule and cancel two timer handles a request (2.3 us each
  here, 2-3% of a session next-word's CPU).

These answers are written here, before any ASGI app exists for the request: JSON bodies in
the shape of the app's own (app.api.errors renders them), one access-log line each.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

from app.api.errors import error_response

access_log = logging.getLogger("app.access")
MIN_IDLE_S = 0.25  # a connection younger than this in its state is never closed to make room
LINGER_S = 1.0  # a connection answered here is read (and dropped) this long, then closed


@dataclass(frozen=True)
class ConnectionLimits:
    head_timeout_s: float
    max_head_bytes: int
    max_connections: int
    max_lingering: int = 256  # answered connections read at once at most (file descriptors)
    access_log: bool = True


class CoalescedWrites:
    """A transport whose writes within one turn of the event loop go out as one: uvicorn
    writes a response's head and its body separately, which is two system calls (and two
    TCP segments) per response; held until the loop's next turn, they are one. Everything
    else is the transport's own; closing or half-closing sends what is held first."""

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(bytes(data))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held and not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head size cap and a connection
    cap (the module's docstring). `limits` is set by `bounded_protocol`."""

    limits: ConnectionLimits
    lingering = 0  # connections answered here and still read, in this process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_head = True  # between requests, or reading one's head
        self.head_bytes = 0  # bytes of this head so far
        self.since = 0.0  # when this connection went idle or began its head (loop time)
        # the connection's deadline (loop time; None: a request is being answered), whether
        # it is its head's (else the keep-alive's), and the timer that checks it
        self.deadline: float | None = None
        self.head_due = True
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.linger: asyncio.TimerHandle | None = None
        self.accepted = False  # counted among the server's connections
        self.answered = False  # answered here: what comes is dropped until it closes
        self.writes: CoalescedWrites | None = None

    # -- the connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.since = self.loop.time()
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            self._refuse(transport)
            return
        self.writes = CoalescedWrites(transport, self.loop)
        super().connection_made(self.writes)  # type: ignore[arg-type]
        self.accepted = True
        self._head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        for timer in (self.timer, self.linger):  # nothing holds a closed connection
            if timer is not None:
                timer.cancel()
        self.timer = self.linger = None
        if self.answered:
            self.answered = False
            BoundedHttpTools.lingering -= 1
        if self.accepted:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # read and dropped, so that the answer is not lost to a reset
        if self.in_head:
            self.head_bytes += len(data)
            if not self.head_due:  # the first bytes of a head: its deadline from now
                self._head_deadline()
        super().data_received(data)
        if self.in_head and self.head_bytes > self.limits.max_head_bytes:
            self._answer(
                431,
                f"the request head is more than {self.head_bytes:,} bytes and still coming; "
                f"this server takes at most {self.limits.max_head_bytes:,} (MAX_HEADER_BYTES)",
            )

    # -- the parser's callbacks ----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, but for its keep-alive timer: the connection's own deadline instead."""
        if self.writes is not None:
            self.writes.flush()  # the response's head and body in one write
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: answer it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.deadline is None:  # idle: the keep-alive's deadline (a head may have begun)
            self._set_deadline(self.loop.time() + self.timeout_keep_alive, head=False)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head, self.head_bytes, self.since = True, 0, self.loop.time()

    # -- the deadlines: the head's and the keep-alive's ----------------------------------------
    def _head_deadline(self) -> None:
        """A head begins (the connection's start, a later request's first byte): its deadline."""
        self.since = self.loop.time()
        self._set_deadline(self.since + self.limits.head_timeout_s, head=True)

    def _set_deadline(self, at: float, head: bool) -> None:
        self.deadline, self.head_due = at, head
        if self.timer is None or at < self.timer_at:  # else the timer finds it when it fires
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = self.loop.call_at(at, self._due), at

    def _disarm(self) -> None:
        """No deadline: a request is being answered (its body has its own, app.api.edge)."""
        self.deadline, self.head_due = None, False

    def _due(self) -> None:
        self.timer = None
        at = self.deadline
        if at is None:  # a request is being answered: the next deadline sets a timer
            return
        if self.loop.time() + 0.001 < at:  # moved since the timer was set: wait for it
            self.timer, self.timer_at = self.loop.call_at(at, self._due), at
            return
        head = self.head_due
        self._disarm()
        if head:
            self._head_late()
        else:
            self.timeout_keep_alive_handler()

    def _head_late(self) -> None:
        if self.head_bytes == 0:  # nothing sent: close, as for an idle kept-alive connection
            if not self.transport.is_closing():
                self.transport.close()
            return
        self._answer(
            408,
            f"the request head took longer than {self.limits.head_timeout_s:g} s to arrive "
            "(HEADER_TIMEOUT_SECONDS)",
        )

    # -- the connection cap --------------------------------------------------------------------
    def _waiting(self) -> bool:
        """Between requests or reading a head, with no response on its way."""
        return self.in_head and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> bool:
        """Close the connection slowest with its head (503), else the one idle longest (a
        client between requests is not the likeliest abuser); False when every connection is
        busy (or too young to judge)."""
        now = self.loop.time()
        idle: BoundedHttpTools | None = None
        slow: BoundedHttpTools | None = None
        for conn in self.connections:
            if not isinstance(conn, BoundedHttpTools) or not conn._waiting():
                continue
            if now - conn.since < MIN_IDLE_S or conn.transport.is_closing():
                continue
            if conn.head_bytes == 0:
                if idle is None or conn.since < idle.since:
                    idle = conn
            elif slow is None or conn.since < slow.since:
                slow = conn
        if slow is not None:
            slow._answer(503, self._full_message(), retry_after=True)
            slow.connections.discard(slow)  # the room is needed now, not when it is lost
            return True
        if idle is not None:
            idle.transport.close()
            idle.connections.discard(idle)
            return True
        return False

    def _full_message(self) -> str:
        return (
            f"the server is at its limit of {self.limits.max_connections:,} open connections "
            "(MAX_CONNECTIONS); try again shortly"
        )

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503 to a connection past the cap. It is kept a moment, its bytes read and dropped,
        so that closing it with its request unread does not reset the answer away."""
        self.transport = transport
        self.client = get_remote_addr(transport)
        self._close_after(self._response(503, self._full_message(), retry_after=True))
        self._log(503, "connection refused: MAX_CONNECTIONS")

    def _close_after(self, answer: bytes) -> None:
        """Write `answer`, then close: after LINGER_S of reading and dropping what the client
        still sends (closing with unread bytes would reset the connection, and the answer
        with it), or at once when too many linger already."""
        self._disarm()
        self.answered = True
        BoundedHttpTools.lingering += 1
        transport = self.transport
        transport.write(answer)
        if BoundedHttpTools.lingering > self.limits.max_lingering or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.linger = self.loop.call_later(LINGER_S, transport.close)

    # -- answers written here ------------------------------------------------------------------
    def _answer(self, status: int, detail: str, retry_after: bool = False) -> None:
        """Answer `status` and close, unless a response is already on its way on this
        connection (a pipelined head): then the connection closes once it is sent."""
        self._disarm()
        if self.transport.is_closing() or self.answered:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.in_head = False  # count no more
            self.flow.pause_reading()
            return
        self.in_head = False
        self._close_after(self._response(status, detail, retry_after))
        self._log(status, detail)

    def _response(self, status: int, detail: str, retry_after: bool) -> bytes:
        headers = {"Retry-After": "1"} if retry_after else {}
        answer = error_response(status, detail, headers={**headers, "Connection": "close"})
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *answer.raw_headers):
            head += [name, b": ", value, b"\r\n"]
        return b"".join([*head, b"\r\n", answer.body])

    def _log(self, status: int, reason: str) -> None:
        if self.limits.access_log:
            client = self.client
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "route": "connection",
                        "status": status,
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "reason": reason,
                    }
                },
            )


def bounded_protocol(limits: ConnectionLimits) -> type[BoundedHttpTools]:
    """The protocol class to give uvicorn (`http=`), with these limits."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpTools,), {"limits": limits})
