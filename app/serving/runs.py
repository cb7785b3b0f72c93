"""A request's generations on one engine: a continuation's one, or a completion's choices."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass

from app.engine.engine import Engine
from app.engine.generation import Generation, OnWord
from app.engine.params import SamplingParams
from app.engine.sequences import Sequence
from app.serving.sessions import Lease, applied


@dataclass(slots=True)
class Choice:
    """One generation of a request: a prompt continued once (a completion's prompt n or
    best_of times, a continuation's text once)."""

    prompt: int  # index of its prompt
    params: SamplingParams
    gen: Generation | None = None  # once started
    seq: Sequence | None = None  # the lease's, or its own (closed when done; given opened,
    # from the prefix cache, with `fed` of its prompt's ids already in its state)
    fed: int = 0
    started: bool = False  # started (or never to be: the request failed); its end ends it
    index: int = 0  # in the response

    @property
    def done(self) -> bool:
        return self.started and (self.gen is None or self.gen.done)


class Run:
    """Starts a request's choices on the engine, at most `window` at once: as one ends, the
    next goes in, in the place the ended one held (`reserved`: a full queue does not refuse
    it). So one request never holds more than its share of the model's queue, and since the
    engine takes its queue in turn, a large request's words come interleaved with everyone
    else's: it slows down instead of starving others. A choice's own sequence is closed as
    soon as it ends (its state is no longer needed; its words are in its generation); with a
    lease, every choice (there is one) runs on the session's sequence, its words fed too."""

    def __init__(
        self,
        engine: Engine,
        prompts: list[list[int]],
        choices: list[Choice],
        lease: Lease | None = None,
        window: int = 1,
    ):
        self.engine = engine
        self.prompts = prompts
        self.choices = choices
        self.lease = lease
        self.window = window
        self.applied = applied(lease) if lease is not None else None
        self.on_end: Callable[[], None] | None = None  # told of each choice's end
        self.on_word: OnWord | None = None  # told of each word
        self.next = 0  # the first choice not yet started
        self.running = 0
        self.stopped = False
        self.error: BaseException | None = None
        self.finished = asyncio.Event()

    def start(self) -> None:
        """Start the first window of choices; a full queue refuses the request here
        (AtCapacity), before any word is generated, and nothing is left running."""
        try:
            self.fill(reserved=False)
        except BaseException:
            self.release()
            raise

    def fill(self, reserved: bool) -> None:
        choices = self.choices
        while self.running < self.window and self.next < len(choices) and not self.stopped:
            c = choices[self.next]
            self.next += 1
            self.submit(c, reserved)
        if self.running == 0 and self.next >= len(choices):
            self.finished.set()

    def submit(self, c: Choice, reserved: bool) -> None:
        lease, params = self.lease, c.params
        ids = self.prompts[c.prompt]
        # the prompt's words before the scored ones; nothing, when there is nothing to
        # generate and no session to keep them
        keep = lease is not None or params.max_words or params.forced
        feed = ids[c.fed : len(ids) - len(params.forced)] if keep else []
        if lease is not None:
            c.seq = lease.seq
        elif c.seq is None:
            c.seq = self.engine.open()
        c.started = True
        end = functools.partial(self.ended, c)
        c.gen = c.seq.start(feed, params, self.applied, self.on_word, end, reserved)
        self.running += 1

    def ended(self, c: Choice, gen: Generation) -> None:
        self.running -= 1
        self.close(c)
        if not self.stopped:
            if (error := gen.error) is not None:
                self.fail(error)
            else:
                try:
                    self.fill(reserved=True)
                except Exception as e:  # the engine stopped, say: the rest cannot run
                    self.fail(e)
        if self.on_end is not None:
            self.on_end()

    def close(self, c: Choice) -> None:
        if self.lease is None and c.seq is not None:
            c.seq.close()
        c.seq = None

    def fail(self, error: BaseException) -> None:
        """No more starts; the choices never started count as ended (a stream ends them)."""
        self.error = error
        self.stopped = True
        for c in self.choices[self.next :]:
            c.started = True
        self.next = len(self.choices)
        self.finished.set()

    async def wait(self) -> None:
        """Until every choice has ended (the first error of one, if any); then release."""
        try:
            await self.finished.wait()
            if self.error is not None:
                raise self.error
        finally:
            self.release()

    def release(self) -> None:
        """Stop: cancel what still runs (the engine drops it), start nothing more, and close
        the choices' sequences."""
        self.stopped = True
        for c in self.choices:
            if c.gen is not None:
                c.gen.cancel()
            self.close(c)
