"""Domain errors, and the one place that turns them into HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


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


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    app.add_exception_handler(ServiceError, service_error)
