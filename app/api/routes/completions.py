"""`POST /v1/completions`: OpenAI's legacy completions protocol, over our engine."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from app.api.deps import OwnerDep, ServiceDep
from app.api.disconnect import CLIENT_CLOSED, unless_client_leaves
from app.api.openapi import documented
from app.api.routes import COMPLETIONS, hot
from app.api.streaming import CompletionChunks, respond
from app.core.observability import answered_by
from app.schemas.common import TEXT_EXAMPLE, sse_event
from app.schemas.openai import CompletionRequest, CompletionResponse
from app.serving.completions import CompletionService

router = APIRouter(tags=["openai"])

EXAMPLES: dict[str, Any] = {
    "batch": {
        "summary": "a batch of prompts, greedy",
        "value": {
            "model": "gru",
            "prompt": ["one thousand one hundred one ,", "seven thousand ninety ,"],
            "max_tokens": 6,
            "temperature": 0,
            "stop": [","],
        },
    },
    "stream": {
        "summary": "a stream, sampled, with its usage",
        "value": {
            "model": "gru",
            "prompt": TEXT_EXAMPLE,
            "max_tokens": 12,
            "temperature": 0.7,
            "seed": 42,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    },
    "echo": {
        "summary": "score a text (lm-evaluation-harness's likelihood call)",
        "value": {
            "prompt": "one hundred one , one hundred two",
            "max_tokens": 0,
            "echo": True,
            "logprobs": 1,
        },
    },
    "session": {
        "summary": "continue a session (extension)",
        "value": {
            "prompt": "five ,",
            "max_tokens": 5,
            "temperature": 0,
            "session_id": "<an id from POST /v1/sessions>",
        },
    },
}

STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` Server-Sent Events: one "
        "`data: <completion chunk>` per word, a last chunk per choice with its finish_reason, "
        "the usage chunk if asked (`choices: []`), then `data: [DONE]`",
        "content": {
            "text/event-stream": {"schema": sse_event("a completion chunk (JSON), or [DONE]")}
        },
    }
}


def json_response(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    COMPLETIONS,
    response_model=CompletionResponse,
    responses={**STREAM, **documented(404, 409, 429, openai=True)},
    openapi_extra={"requestBody": {"content": {"application/json": {"examples": EXAMPLES}}}},
)
@hot  # the fast path hands a stream to FastAPI
async def create_completion(
    req: CompletionRequest,
    request: Request,
    service: ServiceDep,
    owner: OwnerDep,
    x_session_id: Annotated[str | None, Header(description="a session to continue")] = None,
) -> Response:
    """OpenAI's completions: prompts continued word by word, logprobs, echo, streams."""
    completions = CompletionService(service)
    plan = completions.plan(req, x_session_id)
    if not req.stream:  # work nobody will read stops when its client leaves
        body = await unless_client_leaves(request.receive, completions.run(plan, owner))
        answered_by.set(plan.lm.label)  # a session's version, set in the run's own task
        return Response(status_code=CLIENT_CLOSED) if body is None else json_response(body)
    stream = await completions.stream(plan, owner)
    return respond(stream, CompletionChunks(stream, plan), service.settings)
