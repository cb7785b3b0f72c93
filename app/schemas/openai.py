"""The OpenAI legacy completions protocol (`POST /v1/completions`), as the openai client and
vLLM speak it, plus OpenAI's model objects and error body."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import TEXT_EXAMPLE, TopP

Penalty = Annotated[float | None, Field(ge=-2, le=2, allow_inf_nan=False, examples=[0.5])]
"""OpenAI's presence and frequency penalties: the same bounds, each its own description."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(
        False, description="send a last chunk with the usage (and `choices: []`)"
    )


class CompletionRequest(BaseModel):
    """OpenAI's completions request. Fields outside the protocol are refused (400), except the
    extensions `session_id` and `top_k` (as vLLM's)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="a model of GET /v1/models; the default if absent", examples=["gru"]
    )
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, a list of texts (one choice per text, all batched together), or "
        "token ids (a list, or a list of lists)",
        examples=[TEXT_EXAMPLE],
    )
    max_tokens: int | None = Field(
        16, ge=0, description="words to generate at most (0 with `echo`: only score the prompt)"
    )
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        allow_inf_nan=False,
        description="1 if absent, as OpenAI; 0 is greedy",
        examples=[0.7],
    )
    top_p: TopP = None
    n: int | None = Field(
        None, ge=1, le=128, description="choices per prompt (1 if absent)", examples=[2]
    )
    best_of: int | None = Field(
        None,
        ge=1,
        le=128,
        description="samples per prompt; the n likeliest are returned",
        examples=[4],
    )
    stop: str | list[str] | None = Field(
        None,
        description="up to 4 strings; generation stops before the first one the text would "
        "contain (a word, a sequence of words, or any string)",
        examples=[[","]],
    )
    seed: int | None = Field(None, description="makes sampling reproducible", examples=[42])
    logprobs: int | None = Field(
        None,
        ge=0,
        description="the log-probabilities of the likeliest words at each position",
        examples=[2],
    )
    echo: bool | None = Field(False, description="return the prompt too, scored with `logprobs`")
    stream: bool | None = Field(False, description="Server-Sent Events, one chunk per word")
    stream_options: StreamOptions | None = Field(
        None,
        description="with stream: `include_usage` adds a usage chunk at the end",
        examples=[{"include_usage": True}],
    )
    logit_bias: dict[str, float] | None = Field(
        None,
        description="added to the logits of tokens, keyed by token id (as OpenAI) or by word; "
        "-100 bans a word, 100 forces it",
        examples=[{"hundred": -100}],
    )
    presence_penalty: Penalty = Field(
        None, description="subtracted from the logit of every word generated so far"
    )
    frequency_penalty: Penalty = Field(
        None, description="times its count, subtracted from the logit of each word generated so far"
    )
    user: str | None = Field(None, description="an end-user id: logged", examples=["user-1234"])
    suffix: str | None = Field(
        None, description="not supported: a left-to-right model", examples=[None]
    )
    # extensions
    session_id: str | None = Field(
        None,
        description="extension: feed the prompt into this session and advance it with the "
        "generated words (also the X-Session-ID header)",
        examples=[None],
    )
    top_k: int | None = Field(
        None, ge=1, description="extension: sample among the k likeliest", examples=[10]
    )


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str = Field(examples=[" eight thousand one hundred three ,"])
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = Field(
        description="stop: a stop string came; length: max_tokens (null in stream chunks but "
        "the last of a choice)"
    )


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str = Field(examples=["cmpl-6b0c2f1e9f3a4d0e8c1b2a3f4e5d6c7b"])
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str = Field(examples=["gru"])
    system_fingerprint: str = Field(
        description="the checkpoint: name, version, sha256 prefix", examples=["gru-v1-3fa2c81d"]
    )
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class OpenAIModel(BaseModel):
    """OpenAI's model object."""

    id: str = Field(examples=["gru"])
    object: Literal["model"] = "model"
    created: int = Field(description="when the checkpoint was written (Unix seconds)")
    owned_by: str = Field(examples=["human-numbers"])


class OpenAIError(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError
