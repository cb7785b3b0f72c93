"""Errors on the OpenAI-compatible routes, in OpenAI's shape.

`{"error": {"message", "type", "param", "code"}}` with the statuses our own routes use, and
`x-should-retry: false` on errors a retry cannot fix (the openai client honours it). Only the
paths in OPENAI_PATHS answer this way; every other route keeps `{"detail": ...}`, through the
handlers that were installed before (these wrap them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.core.errors import ServiceError

OPENAI_PATHS = ("/v1/completions",)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


class InvalidRequest(ServiceError):
    """A request the protocol refuses (400), naming the parameter at fault."""

    status_code = 400

    def __init__(self, detail: str, param: str | None = None):
        super().__init__(detail)
        self.param = param


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
            "param": param,
            "code": code,
        }
    }
    headers = dict(headers or {})
    if status not in RETRYABLE:
        headers["x-should-retry"] = "false"
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def service_error_response(e: ServiceError) -> Response:
    return error_response(e.status_code, e.detail, getattr(e, "param", None), headers=e.headers)


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(x) for x in error.get("loc", ()) if x != "body"]
    # a union's members add their type names to the location: keep the field's path
    param = ".".join(x for x in loc if not x[:1].isupper() and "[" not in x) or None
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if error.get("type") == "json_invalid" or not loc:
        return f"the body is not a valid JSON object: {error.get('msg')}", None
    return f"{param}: {error.get('msg')}", param


def is_openai_path(request: Request) -> bool:
    return request.url.path in OPENAI_PATHS


Handler = Callable[[Request, Exception], Awaitable[Response]]


def install_openai_error_handlers(app: FastAPI) -> None:
    """Wrap the app's handlers of domain, validation and HTTP errors: OpenAI's shape on the
    OpenAI routes, the handlers already installed everywhere else."""
    from fastapi.exception_handlers import (
        http_exception_handler,
        request_validation_exception_handler,
    )

    def wrap(kind: type[Exception], default: Handler, openai: Callable[[Any], Response]) -> None:
        inner: Handler = app.exception_handlers.get(kind, default)  # type: ignore[assignment]

        async def handler(request: Request, exc: Exception) -> Response:
            if is_openai_path(request):
                return openai(exc)
            return await inner(request, exc)

        app.add_exception_handler(kind, handler)

    def validation(exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        # unknown fields first: OpenAI names them before anything else
        errors.sort(key=lambda e: e.get("type") != "extra_forbidden")
        message, param = _validation_message(errors[0]) if errors else ("bad request", None)
        return error_response(400, message, param)

    def http(exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    wrap(ServiceError, _reraise, service_error_response)
    wrap(RequestValidationError, request_validation_exception_handler, validation)  # type: ignore[arg-type]
    wrap(HTTPException, http_exception_handler, http)  # type: ignore[arg-type]


async def _reraise(_: Request, exc: Exception) -> Response:
    raise exc
