"""Schema pieces shared by the resources."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_TOP_K = 40  # the vocabulary of the data set (GET /v1/models/{name} lists it)
MAX_SEED = 2**63 - 1  # a seed fits a signed 64-bit integer, as other servers' do


class Strict(BaseModel):
    """Requests refuse unknown fields, so a misspelt option is an error, not silently ignored,
    and take JSON types as they are: `"5"` is not an integer, `0` is not a boolean."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _integral(value: object) -> object:
    """JSON has one number type: `2.0` is the integer 2, as JSON Schema reads it (and as the
    OpenAPI document declares `integer`); `2.5`, `"2"` and `true` stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
"""An integer field of a request: strict, except that an integral number like `2.0` counts."""

# Bounded integers that may also be null. The bounds come before the validator: put on the
# union (`Int | None = Field(ge=...)`), pydantic writes them to the OpenAPI document as
# `ge`/`le`, which JSON Schema does not know, instead of `minimum`/`maximum`.
OptionalTopK = Annotated[int, Field(ge=1, le=MAX_TOP_K), BeforeValidator(_integral)] | None
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)] | None

TopP = Annotated[
    float | None,
    Field(
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="sample among the likeliest words holding this mass",
        examples=[0.9],
    ),
]
"""Nucleus sampling's mass, the same field in our API and in OpenAI's."""


class WordProb(BaseModel):
    word: str = Field(description="a word of the vocabulary", examples=["hundred"])
    prob: float = Field(description="its probability as the next word", examples=[0.93])


TEXT_EXAMPLE = "eight thousand one hundred one, eight thousand one hundred two,"


class ErrorDetail(BaseModel):
    detail: str = Field(examples=["unknown word 'eleventy' at position 2: ..."])


def sse_event(data: str) -> dict[str, object]:
    """The schema of one Server-Sent Event, as OpenAPI reads `schema` of `text/event-stream`
    (3.2's `itemSchema`): the event's fields, `data` a line of text."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "description": data}},
    }


STREAM_RESPONSE: dict[int | str, dict[str, object]] = {
    200: {
        "description": "JSON, or with `stream: true` Server-Sent Events: one "
        '`data: {"word": ..., "prob": ...}` per word, then `data: {"finish_reason": ...}`',
        "content": {
            "text/event-stream": {"schema": sse_event("a JSON object: a word, or the end")}
        },
    }
}
