from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.openapi import documented
from app.api.routes import API_PREFIX
from app.schemas.models import ModelDetail, ModelList

router = APIRouter(prefix=f"{API_PREFIX}/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(service: ServiceDep) -> ModelList:
    """The loaded models, and which one is the default."""
    return service.list_models()


@router.get("/{name}", response_model=ModelDetail, responses=documented(404))
async def get_model(name: str, service: ServiceDep) -> ModelDetail:
    """One model, with its vocabulary."""
    return service.get_model(name)
