from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from app.api.deps import MetricsDep
from app.api.errors import headers_of, status_of
from app.api.openapi import documented
from app.api.routes import hot
from app.core.errors import NotReady

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(description="ready, or not_ready", examples=["ready"])
    models: list[str] = Field(description="the loaded models")
    skipped: list[str] = Field(description="checkpoints refused at start-up, and why")
    problem: str | None = Field(None, description="why it is not ready")


@router.get("/health", response_model=Health)
@hot  # probes and load balancers call these often: answered in one pass too
async def get_health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Ready,
    responses=documented(503, model=Ready),
)
@hot
async def get_ready(request: Request) -> Ready | JSONResponse:
    """Readiness: 200 once the models are loaded, 503 before, and from the shutdown's signal on."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        body = Ready(status="not_ready", models=[], skipped=[], problem="models not loaded")
        return JSONResponse(body.model_dump(), 503, headers_of(NotReady("")))
    models, skipped = sorted(service.registry.models), service.registry.problems
    if request.app.state.drain.draining:  # SIGTERM: out of the load balancer's rotation
        problem = "draining: the server is shutting down"
        body = Ready(status="not_ready", models=models, skipped=skipped, problem=problem)
        return JSONResponse(body.model_dump(), 503, headers_of(NotReady("")))
    try:
        for lm in service.registry.loaded():
            if lm.engine.failure is not None:  # a model whose engine stopped serves nothing
                raise NotReady(lm.engine.failure)
        await service.sessions.check()
        admin = getattr(request.app.state, "admin", None)
        if admin is not None and admin.problem is not None:  # not what the fleet serves
            raise NotReady(admin.problem)
    except NotReady as e:
        body = Ready(status="not_ready", models=models, skipped=skipped, problem=e.detail)
        return JSONResponse(body.model_dump(), status_of(e), headers_of(e))
    return Ready(status="ready", models=models, skipped=skipped)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def get_metrics(request: Request, metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests, latency, sessions, tokens and batch sizes by model."""
    service = getattr(request.app.state, "service", None)
    if service is not None:  # drop expired sessions, so the gauge counts live ones only
        with contextlib.suppress(NotReady):
            await service.sessions.expire()
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
