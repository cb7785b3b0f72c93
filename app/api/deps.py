"""Dependencies of the routes, as named Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.errors import NotReady
from app.core.observability import Metrics
from app.core.security import ApiKeys
from app.serving.service import PredictionService

# Declares the scheme in the OpenAPI document (Swagger's Authorize button); the check itself
# reads the raw header through ApiKeys, exactly as the fast path does.
bearer = HTTPBearer(
    auto_error=False,
    description="An API key, when the server has API_KEYS or API_KEYS_FILE (else not needed)",
)


async def get_service(request: Request) -> PredictionService:
    service: PredictionService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the service is not ready: models are loading or it is shutting down")
    return service


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_owner(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The caller's owner id (its API key's, or the anonymous one); 401 without a valid key."""
    keys: ApiKeys = request.app.state.keys
    return keys.owner(request.headers.get("authorization"))


ServiceDep = Annotated[PredictionService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
OwnerDep = Annotated[str, Depends(get_owner)]
