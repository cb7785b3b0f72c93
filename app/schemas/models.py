from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.openai import OpenAIModel
from model_store import VARIANTS


class ModelInfo(OpenAIModel):
    """Our model fields, and OpenAI's (id, object, created, owned_by) for its clients."""

    name: str = Field(examples=["gru"])
    variant: str = Field(
        description="architecture, one of: "
        + ", ".join(f"{name} ({v.about})" for name, v in VARIANTS.items()),
        examples=["gru"],
    )
    version: int = Field(description="checkpoint version in the store", examples=[1])
    status: Literal["loading", "ready", "draining"] = Field(
        description="ready: takes work; draining: being unloaded, serves only its sessions"
    )
    share: float = Field(
        description="percent of new sessions and stateless requests under the model's name "
        "that this version takes (its traffic split)",
        examples=[100.0],
    )
    parameters: int = Field(examples=[23784])
    hidden_size: int = Field(examples=[56])
    vocab_size: int = Field(examples=[40])
    valid_accuracy: float | None = Field(description="after the last training epoch")
    device: str = Field(examples=["cpu"])
    sha256: str = Field(description="of the checkpoint's weights file")
    metrics: dict[str, float] = Field(
        description="the last training epoch's metrics from meta.json: epoch, train_loss, "
        "valid_loss, accuracy (on valid.txt)"
    )
    default: bool = Field(description="used when a request names no model")
    current: bool = Field(
        description="the version the model's name answers with by default (others are "
        "addressed as NAME@VERSION, or take a share of a traffic split)"
    )


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description="OpenAI's list shape: see `data`")
    data: list[OpenAIModel] = Field(description="the models as OpenAI's clients read them")
    models: list[ModelInfo]
    default: str = Field(examples=["gru"])


class ModelDetail(ModelInfo):
    vocab: list[str] = Field(description="every token of the model, by id")
    words: list[str] = Field(description="the tokens a text may contain (and xxbos)")
