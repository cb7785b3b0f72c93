"""OpenAI's legacy completions over the same engine as /v1/continuation.

Every choice (a prompt, n or best_of times) is one generation of the engine, so the choices
of a request, and those of every other request, advance together in one batch. The
probabilities are the engine's own rows: `logprobs` are the natural logs of what
/v1/continuation returns as `probs`, and greedy is its greedy. Echo scoring has the engine
"choose" the prompt's words as given (SamplingParams.forced), so their probabilities come out
of the same rows. Stop strings are matched on the generated text, as OpenAI does: a word or a
sequence of words at word boundaries, any other string as a substring of the text.
Planning is app.serving.completion_plan, the answer's shapes app.serving.completion_format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from app.core.errors import BadText
from app.core.openai_errors import InvalidRequest
from app.core.security import ANONYMOUS
from app.engine.generation import Generation, OnWord
from app.engine.sequences import Applied
from app.schemas.openai import CompletionRequest
from app.serving.completion_format import body
from app.serving.completion_plan import Choice, Plan, Planner
from app.serving.service import PredictionService
from app.serving.sessions import Lease


class Feeder:
    """Submits a plan's choices to the engine, at most `window` jobs at once: as one ends, the
    next goes in, in the place the ended one held (`reserved`: a full queue does not refuse
    it). So one request never holds more than its share of the model's queue, and since the
    engine takes its queue in turn, a large request's words come interleaved with everyone
    else's: it slows down instead of starving others. A choice's own sequence is closed as
    soon as it ends (its state is no longer needed; its words are in its generation)."""

    def __init__(
        self,
        plan: Plan,
        lease: Lease | None,
        window: int,
        applied: Applied | None,
        on_end: Callable[[], None] | None,
        on_word: OnWord | None,
    ):
        self.plan = plan
        self.lease = lease
        self.window = window
        self.applied = applied
        self.on_end = on_end
        self.on_word = on_word
        self.next = 0  # the first choice not yet started
        self.running = 0
        self.stopped = False
        self.error: BaseException | None = None
        self.finished = asyncio.Event()

    def fill(self, reserved: bool) -> None:
        choices = self.plan.choices
        while self.running < self.window and self.next < len(choices) and not self.stopped:
            c = choices[self.next]
            self.next += 1
            self.submit(c, reserved)
        if self.running == 0 and self.next >= len(choices):
            self.finished.set()

    def submit(self, c: Choice, reserved: bool) -> None:
        lease, params = self.lease, c.params
        ids = self.plan.prompts[c.prompt].ids
        # the prompt's words before the scored ones; nothing, when there is nothing to
        # generate and no session to keep them
        keep = lease is not None or params.max_words or params.forced
        feed = ids[: len(ids) - len(params.forced)] if keep else []
        c.seq = lease.seq if lease is not None else self.plan.lm.engine.open()
        c.started = True
        end = functools.partial(self.ended, c)
        c.gen = c.seq.start(feed, params, self.applied, self.on_word, end, reserved)
        self.running += 1

    def ended(self, c: Choice, gen: Generation) -> None:
        self.running -= 1
        self.close(c)
        if self.stopped:
            return
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
        """No more submits; the choices never started count as ended (a stream ends them)."""
        self.error = error
        self.stop()
        for c in self.plan.choices[self.next :]:
            c.started = True
        self.next = len(self.plan.choices)
        self.finished.set()

    def stop(self) -> None:
        self.stopped = True


class CompletionService:
    """Plans, runs and answers completions; handed the PredictionService for its models,
    sessions and checks."""

    def __init__(self, service: PredictionService):
        self.service = service
        self.planner = Planner(service)

    def plan(self, req: CompletionRequest, session_header: str | None = None) -> Plan:
        """Check everything a request asks before anything runs (a bad one changes nothing)."""
        return self.planner.plan(req, session_header)

    # -- running -------------------------------------------------------------------------
    def window(self, plan: Plan) -> int:
        """The jobs one request may have in its model's queue at once (MAX_QUEUE_SHARE)."""
        return max(1, int(plan.lm.engine.config.max_queue * self.service.settings.MAX_QUEUE_SHARE))

    def start(
        self,
        plan: Plan,
        lease: Lease | None = None,
        on_end: Callable[[], None] | None = None,
        on_word: OnWord | None = None,
    ) -> Feeder:
        """Submit the choices to the engine, one job each, a window of them at a time (see
        Feeder); `on_end` hears of each choice's end. A full queue refuses the request here
        (AtCapacity), before any word is generated."""
        applied = self.service.applied(lease) if lease is not None else None
        feeder = Feeder(plan, lease, self.window(plan), applied, on_end, on_word)
        try:
            feeder.fill(reserved=False)
        except BaseException:
            self.release(feeder)
            raise
        return feeder

    @staticmethod
    def release(feeder: Feeder) -> None:
        """Stop: cancel what still runs (the engine drops it), submit nothing more, and close
        the choices' sequences."""
        feeder.stop()
        for c in feeder.plan.choices:
            if c.gen is not None:
                c.gen.cancel()
            feeder.close(c)

    async def run(self, plan: Plan, owner: str = ANONYMOUS) -> dict[str, Any]:
        """Run a non-streamed completion; the response body."""
        if plan.session_id is None:
            await self.finish(self.start(plan))
            return body(plan)
        async with self.service.sessions.lease(plan.session_id, owner) as lease:
            self.check_session(plan, lease)
            await self.finish(self.start(plan, lease))
        return body(plan)

    async def finish(self, feeder: Feeder) -> None:
        """Until every choice has ended (the first error of one, if any); then release."""
        try:
            await feeder.finished.wait()
            if feeder.error is not None:
                raise feeder.error
        finally:
            self.release(feeder)

    def check_session(self, plan: Plan, lease: Lease) -> None:
        if lease.model.name != plan.lm.name:
            if plan.req.model is not None:
                raise InvalidRequest(
                    f"session {lease.id} runs model {lease.model.name!r}, not {plan.lm.name!r}",
                    "model",
                )
            # no model named: the session's; plan again for its vocabulary
            plan.lm = lease.model
            fresh = self.plan(plan.req.model_copy(update={"model": lease.model.name}), lease.id)
            plan.prompts, plan.choices = fresh.prompts, fresh.choices
        if not plan.prompts[0].ids and not lease.tokens_seen:
            raise BadText("the session has seen no word yet: give a text to continue from")
        if not lease.tokens_seen:  # the first word of a fresh state has no probability
            for c in plan.choices:
                if c.params.logprobs is not None and plan.echo:
                    c.params = dataclasses.replace(c.params, forced=c.params.forced[1:])
