"""The hot routes without FastAPI's per-request machinery.

`POST /v1/next-word` and `POST /v1/sessions/{id}/next-word` are most of a busy server's
traffic. This ASGI middleware answers them itself: the routes marked `hot` where they are
declared (app.api.routes), read from the app's own routes once, when the middleware is built
(path, body model, endpoint, its dependencies); the endpoint is called with the body validated
from the raw bytes in Rust, its response serialized straight to JSON bytes, its errors rendered
as FastAPI's handlers do (app.api.errors). Anything it does not fully understand (another
route, a content type FastAPI would not read as JSON, a body that fails validation) goes on
to FastAPI untouched, with the body replayed, so FastAPI's own answers (422 details included)
stay the reference. The body's size was bounded before (app.api.edge).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from re import Pattern
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.convertors import StringConvertor
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import get_owner, get_service
from app.api.edge import read_body, replay
from app.api.errors import send_response, service_error_response
from app.api.routes import HOT
from app.core.errors import ServiceError
from app.core.security import ApiKeys
from app.serving.service import PredictionService


def is_json(content_type: bytes) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON: application/json or
    application/*+json, parameters allowed (it asks the email package; this is the same)."""
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime.count(b"/") == 1 and (
        mime == b"application/json"
        or (mime.startswith(b"application/") and mime.endswith(b"+json"))
    )


@dataclass(frozen=True)
class HotRoute:
    """A hot route as the fast path calls it: `endpoint(**{body: request, **path params,
    service: ..., owner: ...})`, the names being its parameters'."""

    route: APIRoute  # the scope's route, as FastAPI sets it (the metrics read its path)
    regex: Pattern[str]
    endpoint: Callable[..., Any]
    model: type[BaseModel]
    body: str
    service: str | None
    owner: str | None
    status: int


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The app's APIRoutes, through the routers it includes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)


def hot_route(route: APIRoute) -> HotRoute:
    """What the fast path needs of a route marked hot; ValueError for one it cannot serve."""
    given = {dep.call: dep.name for dep in route.dependant.dependencies}
    bodies = route.dependant.body_params
    model = bodies[0].field_info.annotation if len(bodies) == 1 else None
    if (
        route.methods != {"POST"}
        or not (isinstance(model, type) and issubclass(model, BaseModel))
        or not set(given) <= {get_service, get_owner}
        or not all(isinstance(c, StringConvertor) for c in route.param_convertors.values())
    ):
        raise ValueError(f"the fast path cannot serve {route.path}: see app.api.fastpath")
    return HotRoute(
        route,
        route.path_regex,
        route.endpoint,
        model,
        bodies[0].name,
        given.get(get_service),
        given.get(get_owner),
        route.status_code or 200,
    )


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


class FastPath:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app
        routes = [hot_route(r) for r in api_routes(fastapi_app.routes) if r.endpoint in HOT]
        if not routes:
            raise ValueError("no route is marked hot: the fast path has nothing to serve")
        # paths without parameters by a lookup, the others by their regex
        self.fixed = {r.route.path: r for r in routes if not r.route.param_convertors}
        self.templated = [r for r in routes if r.route.param_convertors]

    def _match(self, scope: Scope) -> tuple[HotRoute, dict[str, Any]] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if (route := self.fixed.get(path)) is not None:
            return route, {}
        for route in self.templated:
            if (match := route.regex.match(path)) is not None:
                return route, match.groupdict()
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
        hot, kwargs = match
        scope["route"] = hot.route  # for the metrics' route label
        keys: ApiKeys = self.fastapi_app.state.keys
        try:  # the key first, as the routes' dependency does: before the body is read
            owner = keys.owner(dict(scope["headers"]).get(b"authorization"))
        except ServiceError as e:
            await send_response(send, service_error_response(e))
            return
        body = await read_body(receive)
        try:
            kwargs[hot.body] = hot.model.model_validate_json(body)
        except ValidationError:  # FastAPI words the 422
            await self.app(scope, replay(body, receive), send)
            return
        if hot.service is not None:
            kwargs[hot.service] = service
        if hot.owner is not None:
            kwargs[hot.owner] = owner
        try:
            response = await hot.endpoint(**kwargs)
        except ServiceError as e:
            await send_response(send, service_error_response(e))
            return
        payload = response.__pydantic_serializer__.to_json(response)
        headers = _json_headers(len(payload))
        await send({"type": "http.response.start", "status": hot.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
