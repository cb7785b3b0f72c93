"""Server-Sent Events for continuations: one event per word, then the finish reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

from app.core.errors import ServiceError
from app.serving.service import Event, FinishEvent, WordEvent

_END = object()


async def event_stream(events: AsyncIterator[Event]) -> EventSourceResponse:
    """Start generating in a task of its own and wait for the first event, so a request
    that fails validation gets its HTTP error status instead of a stream. The task owns the
    generation: if the client goes away, closing the stream cancels it (which releases the
    session); if the stream is never read, the task still finishes on its own (max_words is
    bounded)."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
        except Exception as e:
            await queue.put(e)
        finally:
            await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        first = await queue.get()
    except asyncio.CancelledError:
        task.cancel()
        raise
    if isinstance(first, Exception):
        raise first

    async def sse() -> AsyncIterator[dict[str, str]]:
        item = first
        try:
            while item is not _END:
                if isinstance(item, WordEvent):
                    yield {"data": json.dumps({"word": item.word, "prob": item.prob})}
                elif isinstance(item, FinishEvent):
                    yield {"data": json.dumps({"finish_reason": item.reason})}
                else:  # failed mid-stream: the status is sent already, so say it in an event
                    detail = item.detail if isinstance(item, ServiceError) else "internal error"
                    yield {"data": json.dumps({"error": detail})}
                item = await queue.get()
        finally:
            task.cancel()

    return EventSourceResponse(sse(), ping=15)
