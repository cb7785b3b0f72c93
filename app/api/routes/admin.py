"""The admin API: model versions at run time (on only with ADMIN_API_KEYS or its file).

Load a version of the store beside the others (checked, built, warmed up, then ready: load
first, swap after), promote it (the quality gate: not below the current default's valid
accuracy unless `force`), split new traffic between versions, roll back to the previous
default, unload a version (it drains: its sessions are served until they end or the grace
period does, then get 410). With Redis every replica applies each change (app.serving.admin).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import ServiceDep
from app.api.openapi import documented
from app.core.errors import Forbidden, NotReady
from app.core.security import ApiKeys, Unauthorized
from app.engine.registry import ModelEntry
from app.schemas.admin import (
    AdminModel,
    AdminModels,
    LoadRequest,
    PromoteRequest,
    SplitRequest,
    StoreList,
    StoreVersion,
    UnloadRequest,
)
from app.serving.admin import ModelAdmin
from app.serving.service import PredictionService

admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="An admin key (ADMIN_API_KEYS or ADMIN_API_KEYS_FILE); users' keys get 403",
)


async def get_admin(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]
) -> ModelAdmin:
    """The model admin, for a request with an admin key: 401 without a valid key, 403 with a
    user's key."""
    authorization = request.headers.get("authorization")
    admin_keys: ApiKeys = request.app.state.admin_keys
    try:
        admin_keys.owner(authorization)
    except Unauthorized as e:
        users: ApiKeys = request.app.state.keys
        if e.error == "invalid_token" and users.enabled:
            try:
                users.owner(authorization)
            except Unauthorized:
                raise e from None
            raise Forbidden(
                "this is a user's API key: the admin API takes only admin keys (ADMIN_API_KEYS)"
            ) from None
        raise
    admin: ModelAdmin | None = getattr(request.app.state, "admin", None)
    if admin is None:
        raise NotReady("the service is not ready: models are loading or it is shutting down")
    return admin


AdminDep = Annotated[ModelAdmin, Depends(get_admin)]
ERRORS = documented(401, 403, 404, 409)

router = APIRouter(prefix="/admin", tags=["admin"])


def described(service: PredictionService, entry: ModelEntry) -> AdminModel:
    versions = sorted(entry.versions.values(), key=lambda lm: lm.version)
    return AdminModel(
        name=entry.name,
        default=entry.default,
        previous=entry.previous,
        split=None if entry.split is None else {str(v): s for v, s in entry.split.items()},
        versions=[service.model_info(lm) for lm in versions],
    )


@router.get("/models", response_model=AdminModels, responses=documented(401, 403))
async def list_models(admin: AdminDep, service: ServiceDep) -> AdminModels:
    """Every model's loaded versions, default, previous default and split; and whether this
    replica serves the fleet's state."""
    reg = admin.registry
    return AdminModels(
        default=reg.default,
        models=[described(service, reg.entries[n]) for n in sorted(reg.entries)],
        fleet=admin.fleet.key if admin.fleet is not None else None,
        problem=admin.problem,
    )


@router.get("/store", response_model=StoreList, responses=documented(401, 403))
async def list_store(admin: AdminDep) -> StoreList:
    """Every version in the model store, loaded or not, with its recorded metrics."""
    rows = await asyncio.to_thread(admin.store_versions)
    return StoreList(store=str(admin.registry.store), versions=[StoreVersion(**r) for r in rows])


@router.post("/models/{name}/load", response_model=AdminModel, responses=ERRORS)
async def load(
    name: str, admin: AdminDep, service: ServiceDep, req: LoadRequest | None = None
) -> AdminModel:
    """Load a version of the store (its latest if none is given): verified, built and
    warmed up with a real step before it is ready. It takes no traffic until promoted or
    given a share (a new model's first version is its default). One that fails to load
    never takes traffic: 409 says why."""
    entry = await admin.load(name, req.version if req is not None else None)
    return described(service, entry)


@router.post("/models/{name}/promote", response_model=AdminModel, responses=ERRORS)
async def promote(
    name: str, req: PromoteRequest, admin: AdminDep, service: ServiceDep
) -> AdminModel:
    """Make a loaded version the default (its split ends). The quality gate: a version whose
    recorded valid accuracy is below the current default's is refused (409, both figures)
    unless `force`. Sessions stay on the version that made them."""
    return described(service, await admin.promote(name, req.version, req.force))


@router.put("/models/{name}/split", response_model=AdminModel, responses=ERRORS)
async def split(name: str, req: SplitRequest, admin: AdminDep, service: ServiceDep) -> AdminModel:
    """Share new sessions and stateless requests under the model's name between ready
    versions (a canary: {"1": 90, "2": 10}); the largest share's version is the default.
    Requests that pin NAME@VERSION, and sessions, are not moved."""
    return described(service, await admin.split(name, req.shares))


@router.post("/models/{name}/rollback", response_model=AdminModel, responses=ERRORS)
async def rollback(name: str, admin: AdminDep, service: ServiceDep) -> AdminModel:
    """Back to the previous default, in one call (the current one stays loaded)."""
    return described(service, await admin.rollback(name))


@router.post("/models/{name}/unload", response_model=AdminModel, responses=ERRORS)
async def unload(name: str, req: UnloadRequest, admin: AdminDep, service: ServiceDep) -> AdminModel:
    """Unload a version that is neither the default nor in a split: it drains at once (no
    new work; pinned requests get 410) and serves its sessions until they end or the grace
    period does; then they get 410 naming it, its engine stops and its memory is freed."""
    return described(service, await admin.unload(name, req.version, req.grace_seconds))
