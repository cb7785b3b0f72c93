"""Server-Sent Events for continuations: one event per word, then the finish reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from sse_starlette import EventSourceResponse

from app.core.errors import ServiceError
from app.schemas.predict import ContinuationResponse
from app.serving.service import OnWord


async def event_stream(
    run: Callable[[OnWord], Coroutine[Any, Any, ContinuationResponse]],
) -> EventSourceResponse:
    """Run a continuation in a task of its own, its words queued as they come, and wait for
    the first word, so a request that fails validation gets its HTTP error status instead of
    a stream. If the client goes away, closing the stream cancels the task (which releases
    the session); a stream never read still ends, as max_words is bounded."""
    queue: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()
    task = asyncio.create_task(run(lambda word, prob: queue.put_nowait((word, prob))))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        first = await queue.get()
    except asyncio.CancelledError:
        task.cancel()
        raise
    if first is None and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]

    async def sse() -> AsyncIterator[dict[str, str]]:
        item = first
        try:
            while item is not None:
                yield {"data": json.dumps({"word": item[0], "prob": item[1]})}
                item = await queue.get()
            if (error := task.exception()) is not None:  # the status is sent: say it here
                detail = error.detail if isinstance(error, ServiceError) else "internal error"
                yield {"data": json.dumps({"error": detail})}
            else:
                yield {"data": json.dumps({"finish_reason": task.result().finish_reason})}
        finally:
            task.cancel()

    return EventSourceResponse(sse(), ping=15)
