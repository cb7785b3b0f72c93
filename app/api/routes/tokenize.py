from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.openapi import documented
from app.api.routes import API_PREFIX, hot
from app.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.serving import tokenization

router = APIRouter(prefix=API_PREFIX, tags=["tokenization"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=documented(404))
@hot
async def tokenize_text(req: TokenizeRequest, service: ServiceDep) -> TokenizeResponse:
    """A text's token ids as the model reads them (vLLM's shape), its unknown words reported
    with their positions rather than refused."""
    return tokenization.tokenize(service, req)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=documented(404))
@hot
async def detokenize_ids(req: DetokenizeRequest, service: ServiceDep) -> DetokenizeResponse:
    """The text of token ids (vLLM's shape): the inverse of tokenize."""
    return tokenization.detokenize(service, req)
