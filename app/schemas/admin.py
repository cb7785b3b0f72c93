from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field

from app.schemas.common import Strict, _integral
from app.schemas.models import ModelInfo

Version = Field(description="a checkpoint version of the store", examples=[2])
# bounds before the validator (as app.schemas.common's optional integers): JSON Schema's own
VersionInt = Annotated[int, Field(ge=1, lt=2**31), BeforeValidator(_integral)]
Percent = Annotated[int, Field(ge=0, le=100), BeforeValidator(_integral)]


class LoadRequest(Strict):
    version: VersionInt | None = Field(
        None, description="the store's version to load; its latest if absent"
    )


class PromoteRequest(Strict):
    version: VersionInt = Version
    force: bool = Field(
        False,
        description="promote even if its recorded valid accuracy is below the current "
        "default's (the quality gate)",
    )


class SplitRequest(Strict):
    shares: dict[str, Percent] | None = Field(
        description="percent of new sessions and stateless requests under the model's name by "
        "version, whole numbers summing to 100; null ends the split (all to the default)",
        examples=[{"1": 90, "2": 10}],
    )


class UnloadRequest(Strict):
    version: VersionInt = Version
    grace_seconds: float | None = Field(
        None,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description="its sessions keep being served this long at most (UNLOAD_GRACE_SECONDS "
        "if absent); then they get 410",
    )


class AdminModel(BaseModel):
    name: str = Field(examples=["gru-copy"])
    default: int = Field(description="the version NAME answers with", examples=[2])
    previous: int | None = Field(description="the default before it: what rollback restores")
    split: dict[str, int] | None = Field(
        description="the traffic split by version, percent; null: all to the default"
    )
    versions: list[ModelInfo] = Field(description="every loaded version, draining ones too")


class AdminModels(BaseModel):
    default: str = Field(description="the model used when a request names none")
    models: list[AdminModel]
    fleet: str | None = Field(
        description="with Redis: where the fleet's state is kept, which every replica applies; "
        "null on a single server"
    )
    problem: str | None = Field(
        description="what this replica does not yet serve of the fleet's state, if anything"
    )


class StoreVersion(BaseModel):
    name: str
    version: int
    loaded: bool = Field(description="this server holds it")
    status: str | None = Field(description="loading, ready or draining when loaded")
    variant: str | None
    valid_accuracy: float | None
    sha256: str | None
    created: str | None
    problem: str | None = Field(description="why its meta.json cannot be read, if it cannot")


class StoreList(BaseModel):
    store: str = Field(description="the store folder (STORE)")
    versions: list[StoreVersion]
