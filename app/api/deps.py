"""Dependencies of the routes, as named Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.errors import NotReady
from app.core.observability import Metrics
from app.serving.service import PredictionService


async def get_service(request: Request) -> PredictionService:
    service: PredictionService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the service is not ready: models are loading or it is shutting down")
    return service


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ServiceDep = Annotated[PredictionService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
