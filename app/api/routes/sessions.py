from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import ServiceDep
from app.api.streaming import event_stream
from app.schemas.common import STREAM_RESPONSE, errors
from app.schemas.sessions import (
    SessionContinuationRequest,
    SessionContinuationResponse,
    SessionCreated,
    SessionCreateRequest,
    SessionInfo,
    SessionList,
    SessionNextWordRequest,
    SessionNextWordResponse,
)

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post(
    "",
    response_model=SessionCreated,
    status_code=201,
    responses=errors(404, 413, 422, 429, 503),
)
async def create_session(req: SessionCreateRequest, service: ServiceDep) -> SessionCreated:
    """Start a session: a hidden state kept between calls, optionally fed a first text."""
    return await service.create_session(req)


@router.get("", response_model=SessionList)
async def list_sessions(service: ServiceDep) -> SessionList:
    """The live sessions."""
    return await service.list_sessions()


@router.get("/{session_id}", response_model=SessionInfo, responses=errors(404))
async def get_session(session_id: str, service: ServiceDep) -> SessionInfo:
    """One session: its model, tokens seen, last words and expiry."""
    return await service.get_session(session_id)


@router.delete("/{session_id}", status_code=204, response_class=Response, responses=errors(404))
async def delete_session(session_id: str, service: ServiceDep) -> Response:
    """Delete a session (after the requests already queued on it)."""
    await service.delete_session(session_id)
    return Response(status_code=204)


@router.post(
    "/{session_id}/next-word",
    response_model=SessionNextWordResponse,
    responses=errors(404, 413, 422, 429, 503),
)
async def session_next_word(
    session_id: str, req: SessionNextWordRequest, service: ServiceDep
) -> SessionNextWordResponse:
    """Feed a text (may be empty) into the session; its next-word distribution."""
    return await service.session_next_word(session_id, req)


@router.post(
    "/{session_id}/continuation",
    response_model=SessionContinuationResponse,
    responses={**STREAM_RESPONSE, **errors(404, 413, 422, 429, 503)},
)
async def session_continuation(
    session_id: str, req: SessionContinuationRequest, service: ServiceDep
) -> SessionContinuationResponse | Response:
    """Continue from the session's state; the generated words advance it."""
    if req.stream:
        return await event_stream(
            lambda on_word: service.session_continuation(session_id, req, on_word)
        )
    return await service.session_continuation(session_id, req)


@router.post("/{session_id}/reset", response_model=SessionInfo, responses=errors(404))
async def reset_session(session_id: str, service: ServiceDep) -> SessionInfo:
    """Back to the zero state."""
    return await service.reset_session(session_id)
