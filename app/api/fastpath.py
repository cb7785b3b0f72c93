"""The hot routes in one pass, ahead of the app's middleware stack.

The routes marked `hot` where they are declared (app.api.routes) are most of a busy server's
traffic. This ASGI app stands in front of the app's whole stack (app.main's ServiceApp puts it
there) and answers them itself, doing in one pass what the stack's layers do one after the
other: the header and body bounds (app.api.edge), the API key, the rate limits
(app.api.ratelimit), the request id, the metrics and the access log (app.core.observability),
the shutdown's 503 (app.api.shutdown), with the same functions, so the answers are the same
bytes. Its table is read from the app's own routes once (path, body model, endpoint, its
dependencies); the endpoint is called with the body validated from the raw bytes in Rust, its
answer serialized straight to JSON bytes, its errors rendered by app.api.errors.

Anything it does not fully understand goes to the whole stack untouched, before anything was
charged, counted or logged (the body replayed when it was read), so FastAPI's own answers stay
the reference: another route, a server not ready, a content type FastAPI would not read as
JSON, a request with an Origin when CORS is on, a body that fails validation, a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from re import Pattern
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.convertors import StringConvertor
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import get_owner, get_service
from app.api.edge import BodyDeadlines, Head, replay
from app.api.errors import internal_error, is_openai, service_error_response
from app.api.ratelimit import RateLimiter, refusal, token_cost
from app.api.routes import API_PREFIX, HOT
from app.api.shutdown import shutdown_answer
from app.core import tracing
from app.core.config import Settings
from app.core.errors import ServiceError
from app.core.observability import (
    MODEL_VERSION,
    REQUEST_ID,
    Metrics,
    RequestIds,
    answered_by,
    log_request,
)
from app.core.security import ANONYMOUS, ApiKeys
from app.core.tracing import ServerSpan

log = logging.getLogger("app")
JSON_TYPE = (b"content-type", b"application/json")
UNMATCHED = "unmatched"  # the route label of an answer given before FastAPI's router


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
    service: ..., owner: ..., request: ..., headers...})`, the names being its parameters'."""

    method: str  # POST with a JSON body model, or GET without a body
    path: str  # the template: the metrics' and the access log's route label
    regex: Pattern[str]
    endpoint: Callable[..., Any]
    model: type[BaseModel] | None  # None: a GET
    body: str | None
    keyed: bool  # it needs an API key (when keys are on)
    service: str | None
    owner: str | None
    request: str | None  # a parameter given the Starlette Request
    headers: tuple[tuple[str, bytes], ...]  # (parameter, header name): optional str headers
    status: int
    openai: bool  # errors in OpenAI's shape
    streams: bool  # a body with `stream: true` goes to FastAPI


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The app's APIRoutes, through the routers it includes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)


def hot_route(route: APIRoute) -> HotRoute:
    """What the fast path needs of a route marked hot; ValueError for one it cannot serve."""
    dependant = route.dependant
    given = {dep.call: dep.name for dep in dependant.dependencies}
    bodies = dependant.body_params
    model = bodies[0].field_info.annotation if len(bodies) == 1 else None
    headers = dependant.header_params
    body_model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
    posts = route.methods == {"POST"} and body_model is not None
    gets = route.methods == {"GET"} and not bodies
    if (
        not (posts or gets)
        or not set(given) <= {get_service, get_owner}
        or not all(isinstance(c, StringConvertor) for c in route.param_convertors.values())
        or dependant.query_params
        or dependant.cookie_params
        or not all(h.field_info.annotation == str | None and h.default is None for h in headers)
    ):
        raise ValueError(f"the fast path cannot serve {route.path}: see app.api.fastpath")
    return HotRoute(
        "POST" if posts else "GET",
        route.path,
        route.path_regex,
        route.endpoint,
        body_model if posts else None,
        bodies[0].name if posts else None,
        # every /v1 router is included with the key's dependency (app.main), which the
        # route as declared does not show
        get_owner in given or route.path.startswith(f"{API_PREFIX}/"),
        given.get(get_service),
        given.get(get_owner),
        dependant.request_param_name,
        tuple((h.name, h.alias.lower().encode("latin-1")) for h in headers),
        route.status_code or 200,
        is_openai(route.path),
        body_model is not None and "stream" in body_model.model_fields,
    )


class Reply:
    """One request's answer: sent with its request id, its status and route label kept for
    the metrics and the access log."""

    __slots__ = ("rid", "route", "send", "started", "status")

    def __init__(self, send: Send, rid: bytes):
        self.send = send
        self.rid = rid
        self.status = 500  # what the metrics say of a request that got no answer
        self.route = UNMATCHED
        self.started = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.started = status, True
        headers.append((REQUEST_ID, self.rid))
        if (model := answered_by.get()) is not None:
            headers.append((MODEL_VERSION, model))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def answer(self, response: Response, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        await self.start(response.status_code, [*response.raw_headers, *extra])
        await self.send({"type": "http.response.body", "body": response.body})


class FastPath:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app = app  # the whole stack: everything not answered here
        self.state = fastapi_app.state
        routes = [hot_route(r) for r in api_routes(fastapi_app.routes) if r.endpoint in HOT]
        if not routes:
            raise ValueError("no route is marked hot: the fast path has nothing to serve")
        # paths without parameters by a lookup, the others by their regex
        self.fixed = {(r.method, r.path): r for r in routes if r.regex.groups == 0}
        self.templated = [r for r in routes if r.regex.groups]
        settings: Settings = fastapi_app.state.settings
        self.max_body = settings.MAX_BODY_BYTES
        self.deadlines: BodyDeadlines = fastapi_app.state.body_deadlines
        self.max_headers = settings.MAX_HEADER_BYTES
        self.cors = bool(settings.CORS_ORIGINS)
        self.log_requests = settings.ACCESS_LOG
        self.metrics: Metrics = fastapi_app.state.metrics
        self.request_ids: RequestIds = fastapi_app.state.request_ids
        self.keys: ApiKeys = fastapi_app.state.keys

    def _match(self, scope: Scope) -> tuple[HotRoute, dict[str, Any]] | None:
        if scope["type"] != "http":
            return None
        method: str = scope["method"]
        if method not in ("POST", "GET"):
            return None
        path: str = scope["path"]
        if (route := self.fixed.get((method, path))) is not None:
            return route, {}
        for route in self.templated:
            if route.method == method and (match := route.regex.match(path)) is not None:
                return route, match.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._match(scope)
        if found is None or self.state.service is None:
            await self.app(scope, receive, send)
            return
        hot, kwargs = found
        start = time.perf_counter()
        head = Head.read(scope["headers"])  # what the bounds read
        # the headers read here: the first of each, as Starlette's Headers.get
        origin = False
        content_type = authorization = None
        wanted: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value if content_type is None else content_type
            elif key == b"authorization":
                authorization = value if authorization is None else authorization
            elif key == b"origin":
                origin = True
            elif hot.headers:
                wanted.setdefault(key, value)
        if (origin and self.cors) or (
            not (is_json(content_type or b"") and head.has_body)  # FastAPI words the 422
            if hot.model is not None
            else head.has_body  # a GET with a body: FastAPI's
        ):
            await self.app(scope, receive, send)
            return
        reply = Reply(send, self.request_ids(scope["headers"]))
        answered_by.set(None)
        traced = ServerSpan(scope, reply.rid) if tracing.tracer is not None else None
        handoff: Receive | None = None
        error: BaseException | None = None
        try:
            handoff = await self._serve(
                scope, receive, reply, hot, kwargs, (head, authorization, wanted)
            )
        except asyncio.CancelledError:  # the server's, at the end of its drain (as ShutdownAnswers)
            if not reply.started:
                with contextlib.suppress(Exception):  # the client may be gone
                    await reply.answer(shutdown_answer(hot.openai))
        except Exception as e:
            log.exception("request %s failed", reply.rid.decode())
            error = e
            if not reply.started:
                await reply.answer(internal_error(reply.rid.decode()))
        if handoff is not None:  # nothing charged, counted or logged yet: the stack does it all
            if traced is not None:
                traced.drop()
            await self.app(scope, handoff, send)
            return
        elapsed = time.perf_counter() - start
        self.metrics.observe_request(hot.method, reply.route, reply.status, elapsed)
        if self.log_requests:
            log_request(scope, reply.route, reply.status, elapsed, reply.rid, hot.method)
        if traced is not None:
            route = None if reply.route == UNMATCHED else reply.route
            traced.end(route, reply.status, answered_by.get(), error)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        reply: Reply,
        hot: HotRoute,
        kwargs: dict[str, Any],
        read: tuple[Head, bytes | None, dict[bytes, bytes]],
    ) -> Receive | None:
        """Answer the request; or, before anything is charged or counted, the receive to
        hand it to the whole stack with. `read`: what the bounds read of the head, its
        Authorization and the headers the endpoint takes."""
        head, authorization, wanted = read
        if (refused := head.refusal(self.max_headers, self.max_body)) is not None:
            await reply.answer(refused)
            return None
        body = b""
        if hot.model is not None:
            got = await self.deadlines.read(receive, self.max_body)
            if not isinstance(got, bytes):
                if got is not None:  # 413, 408 (None: the client left, nobody to answer)
                    await reply.answer(got)
                return None
            body = got
        reply.route = hot.path
        owner = ANONYMOUS
        if hot.keyed:
            try:  # the key first, as the routes' dependency does
                owner = self.keys.owner(authorization)
            except ServiceError as e:
                await reply.answer(service_error_response(e, hot.openai))
                return None
        if hot.model is not None and hot.body is not None:
            try:
                kwargs[hot.body] = request = hot.model.model_validate_json(body)
            except ValidationError:  # FastAPI words the 422
                return replay(body, receive)
            if hot.streams and getattr(request, "stream", False):
                return replay(body, receive)
        extra: list[tuple[bytes, bytes]] = []
        limiter: RateLimiter | None = self.state.rate_limiter
        if limiter is not None and hot.path.startswith(API_PREFIX):  # as RateLimits
            refused = await self._rate_limit(limiter, scope, owner, body, extra)
            if refused is not None:
                reply.route = UNMATCHED  # refused before the router, as RateLimits does
                await reply.answer(refused)
                return None
        if hot.service is not None:
            kwargs[hot.service] = self.state.service
        if hot.owner is not None:
            kwargs[hot.owner] = owner
        if hot.request is not None:
            kwargs[hot.request] = Request(scope, receive)
        for name, header in hot.headers:
            value = wanted.get(header)
            kwargs[name] = None if value is None else value.decode("latin-1")
        try:
            answer = await hot.endpoint(**kwargs)
        except ServiceError as e:
            await reply.answer(service_error_response(e, hot.openai), extra)
            return None
        if isinstance(answer, Response):
            await reply.answer(answer, extra)
            return None
        if isinstance(answer, dict):  # a response model's fields (app.serving.service.Plain)
            payload = orjson.dumps(answer, option=orjson.OPT_UTC_Z)
        else:
            payload = answer.__pydantic_serializer__.to_json(answer)
        await reply.start(
            hot.status, [(b"content-length", b"%d" % len(payload)), JSON_TYPE, *extra]
        )
        await reply.send({"type": "http.response.body", "body": payload})
        return None

    async def _rate_limit(
        self,
        limiter: RateLimiter,
        scope: Scope,
        owner: str,
        body: bytes,
        extra: list[tuple[bytes, bytes]],
    ) -> Response | None:
        """RateLimits' charge: the 429 to answer, or None with the RateLimit-* headers in
        `extra` (none when the limiter is out of reach)."""
        if owner == ANONYMOUS:  # keys off: one bucket per client address
            client = scope.get("client")
            who = f"ip:{client[0] if client else '-'}"
        else:
            who = f"key:{owner}"
        path: str = scope["path"]
        tokens = min(token_cost(path, body), limiter.max_cost) if limiter.counts_tokens else 0
        verdict = await limiter.take(who, tokens)
        if verdict is None:
            return None
        i, headers = limiter.headers(verdict)
        if not verdict.allowed:
            return refusal(path, limiter.limits[i], who, tokens, headers)
        extra += headers
        return None
