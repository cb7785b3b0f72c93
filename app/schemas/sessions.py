from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.schemas.common import TEXT_EXAMPLE, Int, Strict, WordProb
from app.schemas.predict import ContinuationResponse, GenerationOptions, ModelName, TopK


class StateLayout(Strict):
    dtype: str = Field(
        max_length=64, description="'float32' (one part, h) or 'parts'", examples=["float32"]
    )
    shape: str = Field(
        max_length=1000,
        description="the part's shape, or every part's name:dtype:shape",
        examples=["1,56"],
    )


class SessionState(Strict):
    """A session's state as a portable document, signed by the server (HMAC-SHA256 of the
    other fields' canonical JSON: sorted keys, no spaces, ASCII). Keep it as it is: a
    document changed in any way is refused."""

    format: Int = Field(description="the document's format version", examples=[1])
    model: str = Field(
        max_length=200, description="the model that made the state", examples=["gru"]
    )
    version: Int = Field(description="the model version that made it", examples=[1])
    layout: StateLayout
    parts: dict[str, str] = Field(
        max_length=16,
        description="each part of the state (h; with gru-copy also keys, ids, seen): its raw "
        "bytes, base64",
        examples=[{"h": "AAAAAA=="}],
    )
    tokens_seen: Int = Field(
        ge=0, le=10**15, description="tokens fed into the state so far", examples=[4]
    )
    last_words: list[str] = Field(
        max_length=10, description="the last tokens fed", examples=[["one", ",", "two"]]
    )
    signature: str = Field(max_length=200, description="HMAC-SHA256, hex")


class SessionCreateRequest(Strict):
    model: str | None = ModelName
    text: str = Field(
        "", description="words to feed at once (may be empty)", examples=["one, two,"]
    )
    top_k: Int = TopK
    state: SessionState | None = Field(
        None,
        description="restore a session from a document of GET /v1/sessions/{id}/state (its "
        "model comes with it: give no `model`); `text` is then fed after it",
        examples=[None],  # a real document is a server's own: GET .../state gives one
    )


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
