from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.schemas.common import TEXT_EXAMPLE, Int, Strict, WordProb
from app.schemas.predict import ContinuationResponse, GenerationOptions, ModelName, TopK


class SessionCreateRequest(Strict):
    model: str | None = ModelName
    text: str = Field(
        "", description="words to feed at once (may be empty)", examples=["one, two,"]
    )
    top_k: Int = TopK


class SessionInfo(BaseModel):
    session_id: str = Field(description="unguessable; keep it secret")
    model: str = Field(examples=["gru"])
    version: int = Field(
        description="the model version that made the session's state: the session stays on "
        "it while it lives",
        examples=[1],
    )
    tokens_seen: int = Field(description="tokens fed into the state so far", examples=[4])
    last_words: list[str] = Field(description="the last tokens fed", examples=[["one", ",", "two"]])
    created_at: datetime
    expires_at: datetime = Field(description="when it expires unless used again")


class SessionList(BaseModel):
    sessions: list[SessionInfo] = Field(description="the caller's sessions, in order of id")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )


class SessionCreated(SessionInfo):
    next: list[WordProb] = Field(description="next-word distribution; [] until a word is seen")


class SessionNextWordRequest(Strict):
    text: str = Field("", description="words to feed first (may be empty)", examples=[TEXT_EXAMPLE])
    top_k: Int = TopK


class SessionNextWordResponse(SessionInfo):
    tokens: list[str] = Field(description="the text of this request as the model read it")
    next: list[WordProb] = Field(description="most likely first; [] until a word is seen")


class SessionResetRequest(Strict):
    model: str | None = Field(
        None,
        description="move the session to this model: NAME (its current version, or one drawn "
        "by its split) or NAME@VERSION; absent: it stays on its own version",
        examples=["gru-copy"],
    )


class SessionContinuationRequest(GenerationOptions):
    text: str = Field("", description="words to feed before generating", examples=[""])


class SessionContinuationResponse(ContinuationResponse):
    session_id: str
    tokens_seen: int = Field(description="after the generated words were fed")
