"""Work that stops when its client leaves, for answers that are not streams too.

A non-streamed completion of thousands of choices may run for minutes; if its client goes
away, nobody will read the answer. The route runs its work in a task while another waits on
the ASGI `receive` channel (the body is read by then, so the next message is the client's
disconnect); the first to finish wins, and a client that left cancels the work: its jobs are
cancelled, the engine drops them, and a session it held is released as on any error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's status for "the client closed the request": logs say so


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone (any body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(receive: Receive, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result; None, with `work` cancelled and ended, if the client left first."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait((task, left), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled itself (shutdown): so is the work
        task.cancel()
        raise
    finally:
        left.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait([task])  # its clean-up (the engine's jobs, a session's lease) done
    return None
