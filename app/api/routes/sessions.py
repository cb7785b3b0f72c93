from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import OwnerDep, ServiceDep
from app.api.openapi import documented
from app.api.routes import API_PREFIX, hot
from app.api.streaming import WordEvents, respond
from app.schemas.common import STREAM_RESPONSE
from app.schemas.sessions import (
    SessionContinuationRequest,
    SessionContinuationResponse,
    SessionCreated,
    SessionCreateRequest,
    SessionInfo,
    SessionList,
    SessionNextWordRequest,
    SessionNextWordResponse,
    SessionResetRequest,
    SessionState,
)
from app.serving.service import Plain

router = APIRouter(prefix=f"{API_PREFIX}/sessions", tags=["sessions"])


@router.post(
    "",
    response_model=SessionCreated,
    status_code=201,
    responses=documented(404, 422, 429, 501),
)
async def create_session(
    req: SessionCreateRequest, service: ServiceDep, owner: OwnerDep
) -> SessionCreated:
    """Start a session: a hidden state kept between calls, optionally fed a first text, or
    restored from a signed `state` document (then fed the text)."""
    return await service.create_session(req, owner)


@router.get("", response_model=SessionList)
async def list_sessions(
    service: ServiceDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="sessions per page")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
) -> SessionList:
    """Your live sessions (those of your API key), a page at a time, in order of id."""
    return await service.list_sessions(owner, limit, cursor)


@router.get("/{session_id}", response_model=SessionInfo, responses=documented(404))
async def get_session(session_id: str, service: ServiceDep, owner: OwnerDep) -> SessionInfo:
    """One session: its model, tokens seen, last words and expiry (reading it is not use)."""
    return await service.get_session(session_id, owner)


@router.delete("/{session_id}", status_code=204, response_class=Response, responses=documented(404))
async def delete_session(session_id: str, service: ServiceDep, owner: OwnerDep) -> Response:
    """Delete a session (after the requests already queued on it)."""
    await service.delete_session(session_id, owner)
    return Response(status_code=204)


@router.post(
    "/{session_id}/next-word",
    response_model=SessionNextWordResponse,
    responses=documented(404, 429),
)
@hot
async def session_next_word(
    session_id: str, req: SessionNextWordRequest, service: ServiceDep, owner: OwnerDep
) -> Plain:
    """Feed a text (may be empty) into the session; its next-word distribution."""
    return await service.session_next_word(session_id, req, owner)


@router.post(
    "/{session_id}/continuation",
    response_model=SessionContinuationResponse,
    responses={**STREAM_RESPONSE, **documented(404, 429)},
)
@hot  # the fast path hands a stream to FastAPI
async def session_continuation(
    session_id: str, req: SessionContinuationRequest, service: ServiceDep, owner: OwnerDep
) -> SessionContinuationResponse | Response:
    """Continue from the session's state; the generated words advance it. A stream that the
    client leaves stops there: the session keeps the words that were sent, no more."""
    if req.stream:
        stream = await service.session_continuation_stream(session_id, req, owner)
        return respond(stream, WordEvents(stream), service.settings)
    return await service.session_continuation(session_id, req, owner=owner)


@router.post("/{session_id}/reset", response_model=SessionInfo, responses=documented(404, 410))
async def reset_session(
    session_id: str, service: ServiceDep, owner: OwnerDep, req: SessionResetRequest | None = None
) -> SessionInfo:
    """Back to the start state (after the implicit xxbos that starts every text); with a
    `model`, on that model or version (how a session moves to a new version)."""
    model = req.model if req is not None else None
    return await service.reset_session(session_id, owner, model)


@router.post(
    "/{session_id}/fork",
    response_model=SessionInfo,
    status_code=201,
    responses=documented(404, 429),
)
async def fork_session(session_id: str, service: ServiceDep, owner: OwnerDep) -> SessionInfo:
    """A new session with this one's state, model version and counters; both go on
    independently."""
    return await service.fork_session(session_id, owner)


@router.get(
    "/{session_id}/state", response_model=SessionState, responses=documented(404, 409, 410, 501)
)
async def get_session_state(session_id: str, service: ServiceDep, owner: OwnerDep) -> SessionState:
    """The session's state as a portable document signed by this server (STATE_SIGNING_KEY):
    `POST /v1/sessions {state}` restores it, here or on another server with the same key."""
    return await service.session_state(session_id, owner)
