"""Tokenize and detokenize, in vLLM's shapes (`prompt`, `tokens` as ids, `count`,
`max_model_len`, `token_strs`) so its clients work, with ours beside them: the words as read,
the unknown ones with their positions, the version that answered."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.common import TEXT_EXAMPLE, Int, Strict
from app.schemas.predict import ModelName


class TokenizeRequest(Strict):
    model: str | None = ModelName
    prompt: str = Field(
        description="a text: words of the vocabulary, commas allowed; unknown words are "
        "reported, not refused",
        examples=[TEXT_EXAMPLE],
    )
    add_special_tokens: bool = Field(
        True,
        description="put xxbos's id first in `tokens`: the start-of-text token the model reads "
        "before every text (implicit on the other routes: send texts without it)",
        examples=[True],
    )
    return_token_strs: bool = Field(
        False, description="also return `token_strs`, the token of each id", examples=[False]
    )


class UnknownWordAt(BaseModel):
    word: str = Field(description="as read: lower case", examples=["eleventy"])
    index: int = Field(
        description="its position in `words` (the text's tokens, counted from 0)", examples=[3]
    )


class TokenizeResponse(BaseModel):
    model: str = Field(examples=["gru"])
    version: int = Field(description="the model version that answered", examples=[1])
    count: int = Field(description="how many ids `tokens` holds", examples=[4])
    max_model_len: int = Field(
        description="tokens one request may feed and generate at most (MAX_REQUEST_TOKENS); a "
        "session reads any number over its requests",
        examples=[200000],
    )
    tokens: list[int] = Field(
        description="the ids the model reads: xxbos's first with add_special_tokens, then "
        "each known word's; an unknown word has none (see `unknown`)",
        examples=[[2, 19, 11, 9]],
    )
    token_strs: list[str] | None = Field(
        None,
        description="the token of each id of `tokens`, with return_token_strs",
        examples=[["xxbos", "eight", "thousand", ","]],
    )
    words: list[str] = Field(
        description="the text's tokens as read (lower case, commas their own), unknown "
        "ones included; xxbos is here only where the text holds it",
        examples=[["eight", "thousand", ","]],
    )
    unknown: list[UnknownWordAt] = Field(
        description="the words not in the model's vocabulary, in order: the other routes "
        "refuse such a text (422)"
    )


class DetokenizeRequest(Strict):
    model: str | None = ModelName
    tokens: list[Int] = Field(
        description="token ids of the model's vocabulary: its words' and xxbos's (as "
        "tokenize gives them)",
        examples=[[19, 11, 9]],
    )


class DetokenizeResponse(BaseModel):
    model: str = Field(examples=["gru"])
    version: int = Field(description="the model version that answered", examples=[1])
    prompt: str = Field(
        description="the tokens joined by single spaces: a text the other routes read as these ids",
        examples=["eight thousand ,"],
    )
    words: list[str] = Field(
        description="the token of each id", examples=[["eight", "thousand", ","]]
    )
