from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import OwnerDep, ServiceDep
from app.api.openapi import documented
from app.api.routes import API_PREFIX, hot
from app.api.streaming import WordEvents, respond
from app.schemas.common import STREAM_RESPONSE
from app.schemas.predict import (
    ContinuationRequest,
    ContinuationResponse,
    NextWordRequest,
    NextWordResponse,
)
from app.serving.service import Plain

router = APIRouter(prefix=API_PREFIX, tags=["prediction"])


@router.post("/next-word", response_model=NextWordResponse, responses=documented(404, 429))
@hot
async def predict_next_word(req: NextWordRequest, service: ServiceDep, owner: OwnerDep) -> Plain:
    """The next-word distribution after a text, from the start state (after the implicit xxbos
    that starts every text)."""
    return await service.next_word(req, owner)


@router.post(
    "/continuation",
    response_model=ContinuationResponse,
    responses={**STREAM_RESPONSE, **documented(404, 429)},
)
@hot  # the fast path hands a stream to FastAPI
async def create_continuation(
    req: ContinuationRequest, service: ServiceDep, owner: OwnerDep
) -> ContinuationResponse | Response:
    """Continue a text word by word: greedy at temperature 0, else sampled."""
    if req.stream:
        stream = await service.continuation_stream(req, owner)
        return respond(stream, WordEvents(stream), service.settings)
    return await service.continuation(req, owner)
