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

import contextlib
import dataclasses
from typing import Any

from app.core.errors import BadText, InvalidRequest
from app.core.security import ANONYMOUS
from app.engine.registry import parse_ref
from app.schemas.openai import CompletionRequest
from app.serving.completion_format import body
from app.serving.completion_plan import Plan, Planner
from app.serving.runs import Run
from app.serving.service import PredictionService
from app.serving.sessions import Lease
from app.serving.streams import GenerationStream


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

    def run_of(self, plan: Plan, lease: Lease | None = None) -> Run:
        """The plan's choices, to start on its model's engine, a window of them at a time."""
        return Run(
            plan.lm.engine, [p.ids for p in plan.prompts], plan.choices, lease, self.window(plan)
        )

    async def run(self, plan: Plan, owner: str = ANONYMOUS) -> dict[str, Any]:
        """Run a non-streamed completion; the response body. A full queue refuses it
        (AtCapacity) before any word is generated."""
        if plan.session_id is None:
            run = self.run_of(plan)
            run.start()
            await run.wait()
            return body(plan)
        async with self.service.sessions.lease(plan.session_id, owner) as lease:
            self.check_session(plan, lease)
            run = self.run_of(plan, lease)
            run.start()
            await run.wait()
        return body(plan)

    async def stream(self, plan: Plan, owner: str = ANONYMOUS) -> GenerationStream:
        """Start a streamed completion (app.serving.streams): a session's is held until the
        stream ends. A full queue refuses it (AtCapacity) before any word is generated."""
        stack = contextlib.AsyncExitStack()
        try:
            lease = None
            if plan.session_id is not None:
                lease = await stack.enter_async_context(
                    self.service.sessions.lease(plan.session_id, owner)
                )
                self.check_session(plan, lease)
            stream = GenerationStream(self.run_of(plan, lease), stack)
            stream.start()
        except BaseException:
            await stack.aclose()
            raise
        return stream

    def check_session(self, plan: Plan, lease: Lease) -> None:
        session = self.service.leased(lease)  # the version that made its state answers
        if session is not plan.lm:
            asked = plan.req.model
            name, version = parse_ref(asked) if asked is not None else (session.name, None)
            if name != session.name:
                raise InvalidRequest(
                    f"session {lease.id} runs model {session.name!r}, not {plan.lm.name!r}",
                    "model",
                )
            if version is not None and version != session.version:
                raise InvalidRequest(
                    f"session {lease.id} runs {session.key}, not {asked}: a session stays on "
                    "the version that made its state (reset it with a model to move it)",
                    "model",
                )
            # the session's version: plan again for its vocabulary
            plan.lm = session
            fresh = self.plan(plan.req.model_copy(update={"model": session.key}), lease.id)
            plan.prompts, plan.choices = fresh.prompts, fresh.choices
        if not plan.prompts[0].ids and not lease.tokens_seen:
            raise BadText("the session has seen no word yet: give a text to continue from")
        if not lease.tokens_seen:  # the first word of a fresh state has no probability
            for c in plan.choices:
                if c.params.logprobs is not None and plan.echo:
                    c.params = dataclasses.replace(c.params, forced=c.params.forced[1:])
