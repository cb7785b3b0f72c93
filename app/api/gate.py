"""Routes outside /v1 that a setting puts behind the API keys: /metrics, the docs."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import service_error_response
from app.core.security import ApiKeys, Unauthorized


class KeyGate:
    """Answers 401 on `paths` unless the request has a valid key (the /v1 routes check keys
    through their dependency, and the fast path through the same ApiKeys)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, paths: frozenset[str]):
        self.app = app
        self.keys = keys
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            try:
                self.keys.owner(dict(scope["headers"]).get(b"authorization"))
            except Unauthorized as e:
                await service_error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)
