"""Tokenize and detokenize: how a model reads a text, and the text of its ids.

Tokenize reports the words a model does not know, where the other routes refuse the text: a
client sees what would be refused before it sends it. Detokenize is tokenize's inverse on the
ids a text can hold (the words' and xxbos's): its prompt, sent as a text, reads as those ids.
"""

from __future__ import annotations

from app.core.config import Settings
from app.core.errors import BadText, TextTooLong
from app.core.redact import clip_number
from app.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    UnknownWordAt,
)
from app.serving.service import PredictionService
from model_store import BOS, split_words

NAMED_IDS = 5  # a refusal names this many bad ids at most


def max_ids(settings: Settings) -> int:
    """Ids one detokenize takes at most: as many as tokenize can answer (a token takes at least
    one character of a text, and xxbos may come first)."""
    return settings.MAX_TEXT_CHARS + 1


def tokenize(service: PredictionService, req: TokenizeRequest) -> TokenizeResponse:
    lm = service.model(req.model)
    service.check_length(req.prompt)
    vocab = lm.vocab
    words = split_words(req.prompt)
    ids = [vocab.typable.get(w) for w in words]  # the lookup Vocab.encode does
    unknown = [UnknownWordAt(word=w, index=i) for i, w in enumerate(words) if ids[i] is None]
    tokens = [i for i in ids if i is not None]
    bos = vocab.typable.get(BOS)
    if req.add_special_tokens and bos is not None:
        tokens.insert(0, bos)
    return TokenizeResponse(
        model=lm.name,
        version=lm.version,
        count=len(tokens),
        max_model_len=service.settings.MAX_REQUEST_TOKENS,
        tokens=tokens,
        token_strs=vocab.decode(tokens) if req.return_token_strs else None,
        words=words,
        unknown=unknown,
    )


def detokenize(service: PredictionService, req: DetokenizeRequest) -> DetokenizeResponse:
    lm = service.model(req.model)
    limit = max_ids(service.settings)
    if len(req.tokens) > limit:
        raise TextTooLong(
            f"tokens holds {len(req.tokens):,} ids; this server takes at most {limit:,} "
            "(MAX_TEXT_CHARS + 1: as many as the longest text and its xxbos)"
        )
    vocab = lm.vocab
    typable = set(vocab.typable.values())
    bad = [(i, t) for i, t in enumerate(req.tokens) if t not in typable]
    if bad:
        named = ", ".join(f"{name_id(vocab.itos, t)} at index {i}" for i, t in bad[:NAMED_IDS])
        more = f" and {len(bad) - NAMED_IDS:,} more" if len(bad) > NAMED_IDS else ""
        raise BadText(
            f"token ids not of a text of model {lm.name!r}: {named}{more}; ids run 0 to "
            f"{len(vocab) - 1}, of which a text holds its words' and xxbos's (GET "
            f"/v1/models/{lm.name} lists the vocabulary, in order of id)"
        )
    words = vocab.decode(req.tokens)
    return DetokenizeResponse(
        model=lm.name, version=lm.version, prompt=" ".join(words), words=words
    )


def name_id(itos: tuple[str, ...], token: int) -> str:
    """A bad id for a message: with its token when it has one (a special token's)."""
    if 0 <= token < len(itos):
        return f"{token} ({itos[token]})"
    return clip_number(token)
