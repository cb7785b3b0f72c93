"""Domain errors, and the one place that turns them into HTTP responses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from app.core.redact import QUOTE_CHARS


class ServiceError(Exception):
    """An error a client can act on; `status_code` and `detail` become the HTTP response."""

    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


class UnknownModel(ServiceError):
    status_code = 404


class UnknownSession(ServiceError):
    status_code = 404


class StateMismatch(ServiceError):
    """A stored session state that does not fit its model (the model was replaced)."""

    status_code = 409


class BadText(ServiceError):
    """A text that cannot be used: empty where a word is needed."""

    status_code = 422


class TextTooLong(ServiceError):
    status_code = 413


class OverLimit(ServiceError):
    """A request that would cost more than a setting allows (400), naming the field at fault:
    refused before anything is built for it."""

    status_code = 400

    def __init__(self, detail: str, param: str | None = None):
        super().__init__(detail)
        self.param = param


class AtCapacity(ServiceError):
    """The server holds as many sessions, or queued steps, as it may."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int = 1):
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class NotReady(ServiceError):
    """Not serving (yet, or any more): models loading, shutting down, a store unreachable."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int = 5):
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class EngineFailure(ServiceError):
    """The engine failed on one request (a bug, not the client's fault); others go on."""

    status_code = 500


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


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": validation_details(exc.errors())}, 422)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405 and (allow := allowed_methods(request)) is not None:
            exc.headers = {**(exc.headers or {}), "Allow": allow}
        return await http_exception_handler(request, exc)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)


def allowed_methods(request: Request) -> str | None:
    """The methods the OpenAPI document lists for this path. Starlette's 405 names those of
    the first route that matched the path alone, so `PUT /v1/sessions` would say
    `Allow: POST` though `GET /v1/sessions` exists too. None for an undocumented path."""
    path = request.scope.get("path", "")
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            return ", ".join(sorted(method.upper() for method in operations))
    return None
