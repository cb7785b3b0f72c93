"""The hot routes without FastAPI's per-request machinery.

`POST /v1/next-word` and `POST /v1/sessions/{id}/next-word` are most of a busy server's
traffic. This ASGI middleware answers them itself: the same pydantic request models
(validated from the raw bytes in Rust), the same service calls, the same responses and
errors, serialized straight to JSON bytes. Anything it does not fully understand (another
route, a content type FastAPI would not read as JSON, a body that fails validation) goes on
to FastAPI untouched, with the body replayed, so FastAPI's own answers (422 details included)
stay the reference. The body's size was bounded before (app.api.edge).
The FastAPI routes still exist and document these paths in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.edge import replay
from app.api.errors import send_response, service_error_response
from app.core.errors import ServiceError
from app.core.security import ApiKeys
from app.schemas.predict import NextWordRequest
from app.schemas.sessions import SessionNextWordRequest
from app.serving.service import PredictionService

SESSIONS = "/v1/sessions/"
NEXT_WORD = "/next-word"


def is_json(content_type: bytes) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON: application/json or
    application/*+json, parameters allowed (it asks the email package; this is the same)."""
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime.count(b"/") == 1 and (
        mime == b"application/json"
        or (mime.startswith(b"application/") and mime.endswith(b"+json"))
    )


@dataclass(frozen=True)
class RouteLabel:
    """Stands for the matched route in the scope, as the metrics read its `path`."""

    path: str


NEXT_WORD_ROUTE = RouteLabel("/v1/next-word")
SESSION_NEXT_WORD_ROUTE = RouteLabel("/v1/sessions/{session_id}/next-word")

Handler = Callable[[PredictionService, BaseModel, str, str], Awaitable[BaseModel]]


async def _next_word(service: PredictionService, req: Any, _: str, __: str) -> BaseModel:
    return await service.next_word(req)


async def _session_next_word(
    service: PredictionService, req: Any, sid: str, owner: str
) -> BaseModel:
    return await service.session_next_word(sid, req, owner)


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


class FastPath:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app

    def _match(self, scope: Scope) -> tuple[Handler, type[BaseModel], str, RouteLabel] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if path == "/v1/next-word":
            return _next_word, NextWordRequest, "", NEXT_WORD_ROUTE
        if path.startswith(SESSIONS) and path.endswith(NEXT_WORD):
            sid = path[len(SESSIONS) : -len(NEXT_WORD)]
            if sid and "/" not in sid:
                return _session_next_word, SessionNextWordRequest, sid, SESSION_NEXT_WORD_ROUTE
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self._match(scope)
        service: PredictionService | None = getattr(self.fastapi_app.state, "service", None)
        if (
            match is None
            or service is None
            or not is_json(dict(scope["headers"]).get(b"content-type", b""))
        ):
            await self.app(scope, receive, send)
            return
        handler, model, sid, route = match
        scope["route"] = route  # for the metrics' route label
        keys: ApiKeys = self.fastapi_app.state.keys
        try:  # the key first, as the routes' dependency does: before the body is read
            owner = keys.owner(dict(scope["headers"]).get(b"authorization"))
        except ServiceError as e:
            await send_response(send, service_error_response(e))
            return
        body, more = b"", True
        while more:  # BoundedRequests has read it whole already: one message
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            req = model.model_validate_json(body)
        except ValidationError:  # FastAPI words the 422
            await self.app(scope, replay(body, receive), send)
            return
        try:
            response = await handler(service, req, sid, owner)
        except ServiceError as e:
            await send_response(send, service_error_response(e))
            return
        payload = response.__pydantic_serializer__.to_json(response)
        await send(
            {"type": "http.response.start", "status": 200, "headers": _json_headers(len(payload))}
        )
        await send({"type": "http.response.body", "body": payload})
