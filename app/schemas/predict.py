from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.schemas.common import (
    MAX_TOP_K,
    TEXT_EXAMPLE,
    Int,
    OptionalTopK,
    Seed,
    Strict,
    TopP,
    WordProb,
)

TopK = Field(
    5,
    ge=1,
    le=MAX_TOP_K,
    description="how many of the most likely next words to return",
    examples=[5],
)
StopWord = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ModelName = Field(
    None,
    description="a model of GET /v1/models: NAME (its current version, or one drawn by its "
    "traffic split) or NAME@VERSION (pinned); the default model if absent",
    examples=["gru"],
)


class NextWordRequest(Strict):
    text: str = Field(
        description="words of the vocabulary, commas allowed", examples=[TEXT_EXAMPLE]
    )
    model: str | None = ModelName
    top_k: Int = TopK


class NextWordResponse(BaseModel):
    model: str = Field(examples=["gru"])
    version: int = Field(description="the model version that answered", examples=[1])
    tokens: list[str] = Field(
        description="the text as the model read it", examples=[["eight", ","]]
    )
    next: list[WordProb] = Field(description="most likely first")


class GenerationOptions(Strict):
    max_words: Int = Field(20, ge=1, description="words to generate at most", examples=[12])
    temperature: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="0 is greedy; higher samples more freely",
        examples=[0.0],
    )
    top_k: OptionalTopK = Field(
        None, description="sample among the k likeliest words", examples=[10]
    )
    top_p: TopP = None
    seed: Seed = Field(None, description="makes sampling reproducible", examples=[42])
    stop: list[StopWord] = Field(
        default_factory=list,
        max_length=16,
        description="words that end the continuation (not returned, not fed)",
        examples=[[","]],
    )
    stream: bool = Field(
        False, description="send Server-Sent Events, one per word", examples=[False]
    )


class ContinuationRequest(GenerationOptions):
    text: str = Field(description="the text to continue", examples=[TEXT_EXAMPLE])
    model: str | None = ModelName


FinishReason = Literal["stop", "length"]


class ContinuationResponse(BaseModel):
    model: str = Field(examples=["gru"])
    version: int = Field(description="the model version that answered", examples=[1])
    words: list[str] = Field(examples=[["eight", "thousand", "one", "hundred", "three"]])
    probs: list[float] = Field(description="the model's probability of each word")
    text: str = Field(description="the words joined by spaces")
    finish_reason: FinishReason = Field(description="stop: a stop word came; length: max_words")
