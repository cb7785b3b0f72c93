"""Server-Sent Events for continuations: one event per word, then the finish reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from app.api.sse import EventStream
from app.core.errors import ServiceError
from app.schemas.predict import ContinuationResponse
from app.serving.service import OnWord


async def event_stream(
    run: Callable[[OnWord], Coroutine[Any, Any, ContinuationResponse]],
) -> EventStream:
    """Run a continuation in a task of its own, its words encoded as they come, and wait for
    the first word, so a request that fails validation gets its HTTP error status instead of
    a stream. If the client goes away, closing the stream cancels the task (which releases
    the session); a stream never read still ends, as max_words is bounded."""
    ready: list[bytes] = []
    stream = EventStream()

    def on_word(word: str, prob: float) -> None:
        ready.append(event({"word": word, "prob": prob}))
        stream.wake()

    task = asyncio.create_task(run(on_word))
    task.add_done_callback(lambda _: stream.wake())
    stream._dirty = False
    try:
        await stream.wait()  # the first word, or the end
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not ready and task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]

    def render() -> tuple[bytes, bool]:
        data = b"".join(ready)
        ready.clear()
        if not task.done():
            return data, False
        error = task.exception() if not task.cancelled() else None
        if error is not None:  # the status is sent: say it here
            detail = error.detail if isinstance(error, ServiceError) else "internal error"
            return data + event({"error": detail}), True
        return data + event({"finish_reason": task.result().finish_reason}), True

    async def close() -> None:
        task.cancel()

    stream.render_events = render
    stream.on_close = close
    stream.wake()
    return stream


def event(data: dict[str, object]) -> bytes:
    """One Server-Sent Event carrying `data` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"
