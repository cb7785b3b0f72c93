"""Errors as HTTP answers, in one place.

The status of each domain error (app/core/errors.py carries none), the two body shapes (ours,
`{"detail": ...}`, and OpenAI's, `{"error": {message, type, param, code}}` on OPENAI_PATHS,
with `x-should-retry: false` on errors a retry cannot fix, as the openai client reads it), and
`error_response`, the one renderer that the exception handlers, the fast path and the edge
(request bounds, connection limits, rate limits, shutdown, the key gate) all answer with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Send

from app.api.routes import OPENAI_PATHS
from app.core.errors import (
    AtCapacity,
    BadState,
    BadText,
    Conflict,
    EngineFailure,
    Forbidden,
    Gone,
    InvalidRequest,
    NotEnabled,
    NotReady,
    OverLimit,
    ServiceError,
    StateMismatch,
    TextTooLong,
    UnknownModel,
    UnknownSession,
)
from app.core.redact import QUOTE_CHARS
from app.core.security import Unauthorized

STATUS: dict[type[ServiceError], int] = {
    ServiceError: 400,
    OverLimit: 400,
    InvalidRequest: 400,
    Unauthorized: 401,
    UnknownModel: 404,
    UnknownSession: 404,
    StateMismatch: 409,
    Conflict: 409,
    Forbidden: 403,
    Gone: 410,
    TextTooLong: 413,
    BadText: 422,
    BadState: 422,
    AtCapacity: 429,
    EngineFailure: 500,
    NotEnabled: 501,
    NotReady: 503,
}
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    410: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


def status_of(e: ServiceError) -> int:
    for cls in type(e).__mro__:  # the nearest class the map names
        if (status := STATUS.get(cls)) is not None:
            return status
    raise AssertionError(f"{type(e).__name__} is not a ServiceError")


def headers_of(e: ServiceError) -> dict[str, str]:
    headers = {}
    if e.retry_after is not None:
        headers["Retry-After"] = str(e.retry_after)
    if isinstance(e, Unauthorized):  # RFC 6750: a missing key gets the bare challenge
        headers["WWW-Authenticate"] = f'Bearer error="{e.error}"' if e.error else "Bearer"
    return headers


def is_openai(path: str) -> bool:
    return path in OPENAI_PATHS


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: the body's `error`, and a stream's last event."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"message": message, "type": kind, "param": param, "code": code}


def _json(content: object) -> bytes:
    """The bytes of Starlette's JSONResponse (FastAPI's own answers are the reference)."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def error_response(
    status: int,
    detail: object,
    *,
    openai: bool = False,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error answer: `{"detail": detail}`, or with `openai` OpenAI's shape of it."""
    extra = dict(headers or {})
    if not openai:
        return Response(_json({"detail": detail}), status, extra, "application/json")
    if status not in RETRYABLE:
        extra["x-should-retry"] = "false"
    body = {"error": openai_error(status, str(detail), param, code)}
    return Response(_json(body), status, extra, "application/json")


def service_error_response(e: ServiceError, openai: bool = False) -> Response:
    status = status_of(e)
    return error_response(status, e.detail, openai=openai, param=e.param, headers=headers_of(e))


async def send_response(send: Send, response: Response) -> None:
    """Send a whole response from an ASGI middleware."""
    start = {"status": response.status_code, "headers": response.raw_headers}
    await send({"type": "http.response.start", **start})
    await send({"type": "http.response.body", "body": response.body})


def internal_error(request_id: str) -> Response:
    """The 500 of an exception that escaped the app (the log has its traceback)."""
    return error_response(500, f"internal error; the log has it under request id {request_id}")


# -- validation errors ---------------------------------------------------------------------
def _plain(value: object) -> str:
    """Text that any JSON encoder takes: lone surrogates escaped, cut to a short prefix."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text):,} chars)"


def _quote(value: object) -> object:
    """A validation error's `input`, safe to send: JSON scalars as they are (finite numbers,
    short plain strings), anything else as a short text."""
    if value is None or (isinstance(value, bool | int) and abs(value) < 2**53):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        plain = _plain(value)
        return value if plain == value else plain
    return _plain(value)


def validation_details(errors: Sequence[Any]) -> list[dict[str, object]]:
    """pydantic's errors as FastAPI returns them, made safe to serialise and short: the
    `input` quoted by prefix, `loc` and `ctx` as plain text where they are not numbers."""
    out: list[dict[str, object]] = []
    for e in errors:
        item: dict[str, object] = {
            "type": e["type"],
            "loc": [p if isinstance(p, int) else _plain(p) for p in e["loc"]],
            "msg": _plain(e["msg"]) if len(e["msg"]) > 200 else e["msg"],
            "input": _quote(e.get("input")),
        }
        if e.get("ctx"):
            item["ctx"] = {str(k): _quote(v) for k, v in e["ctx"].items()}
        out.append(item)
    return out


def openai_validation(errors: Sequence[Any]) -> tuple[str, str | None]:
    """OpenAI's message and param for a body that fails validation: unknown fields first
    (OpenAI names them before anything else), then the first other error."""
    if not errors:
        return "bad request", None
    error = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")[0]
    loc = [str(x) for x in error.get("loc", ()) if x != "body"]
    # a union's members add their type names to the location: keep the field's path
    param = ".".join(x for x in loc if not x[:1].isupper() and "[" not in x) or None
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if error.get("type") == "json_invalid" or not loc:
        return f"the body is not a valid JSON object: {error.get('msg')}", None
    return f"{param}: {error.get('msg')}", param


def allowed_methods(request: Request) -> str | None:
    """The methods the OpenAPI document lists for this path. Starlette's 405 names those of
    the first route that matched the path alone, so `PUT /v1/sessions` would say
    `Allow: POST` though `GET /v1/sessions` exists too. None for an undocumented path."""
    path = request.scope.get("path", "")
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            return ", ".join(sorted(method.upper() for method in operations))
    return None


# -- the app's exception handlers ------------------------------------------------------------
Handler = Callable[[Request, Any], Awaitable[Response]]


async def _service_error(request: Request, exc: ServiceError) -> Response:
    return service_error_response(exc, is_openai(request.url.path))


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    if is_openai(request.url.path):
        message, param = openai_validation(list(exc.errors()))
        return error_response(400, message, openai=True, param=param)
    return error_response(422, validation_details(exc.errors()))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    headers = exc.headers
    if exc.status_code == 405 and (allow := allowed_methods(request)) is not None:
        headers = {**(headers or {}), "Allow": allow}
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=headers)
    openai = is_openai(request.url.path)
    return error_response(exc.status_code, exc.detail, openai=openai, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    handlers: dict[type[Exception], Handler] = {
        ServiceError: _service_error,
        RequestValidationError: _invalid_request,
        HTTPException: _http_error,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
