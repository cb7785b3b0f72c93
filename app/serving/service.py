"""The serving layer: handed the models and the sessions, it does the work of every route."""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from torch import Tensor

from app.core.config import Settings
from app.core.errors import BadText, TextTooLong, UnknownModel
from app.engine.registry import LoadedModel, ModelRegistry
from app.engine.sampling import choose, top_words
from app.schemas.common import WordProb
from app.schemas.models import ModelDetail, ModelInfo, ModelList
from app.schemas.predict import (
    ContinuationRequest,
    ContinuationResponse,
    FinishReason,
    GenerationOptions,
    NextWordRequest,
    NextWordResponse,
)
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
from app.serving.sessions import Session, SessionStore, unknown
from model_store import UnknownWord, split_words


@dataclass(frozen=True, slots=True)
class WordEvent:
    word: str
    prob: float


@dataclass(frozen=True, slots=True)
class FinishEvent:
    reason: FinishReason


Event = WordEvent | FinishEvent


async def collect(
    events: AsyncIterator[Event],
) -> tuple[list[str], list[float], FinishReason]:
    """A whole continuation: its words, their probabilities and the finish reason."""
    words: list[str] = []
    probs: list[float] = []
    reason: FinishReason = "length"
    async for event in events:
        if isinstance(event, WordEvent):
            words.append(event.word)
            probs.append(event.prob)
        else:
            reason = event.reason
    return words, probs, reason


def timestamp(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class PredictionService:
    def __init__(self, registry: ModelRegistry, sessions: SessionStore, settings: Settings):
        self.registry = registry
        self.sessions = sessions
        self.settings = settings

    # -- models ----------------------------------------------------------------------------
    def model(self, name: str | None) -> LoadedModel:
        lm = self.registry.get(name)
        if lm is None:
            raise UnknownModel(
                f"no model {name!r}; loaded: {', '.join(sorted(self.registry.models))}"
            )
        return lm

    def model_info(self, lm: LoadedModel) -> ModelInfo:
        ckpt = lm.checkpoint
        return ModelInfo(
            name=lm.name,
            variant=ckpt.config.variant,
            version=ckpt.ref.version,
            parameters=lm.parameters,
            hidden_size=ckpt.config.hidden,
            vocab_size=ckpt.config.vocab_size,
            valid_accuracy=ckpt.valid_accuracy,
            device=str(lm.device),
            sha256=ckpt.sha256,
            default=lm.name == self.registry.default,
        )

    def list_models(self) -> ModelList:
        models = [self.model_info(lm) for _, lm in sorted(self.registry.models.items())]
        return ModelList(models=models, default=self.registry.default)

    def get_model(self, name: str) -> ModelDetail:
        lm = self.model(name)
        return ModelDetail(
            **self.model_info(lm).model_dump(),
            vocab=list(lm.vocab.itos),
            words=[*lm.vocab.words, "xxbos"],
        )

    # -- checks shared by the routes ---------------------------------------------------------
    def encode(self, lm: LoadedModel, text: str, need_words: bool = False) -> list[int]:
        """Token ids of `text`; 413 past MAX_TEXT_CHARS, 422 naming an unknown word."""
        limit = self.settings.MAX_TEXT_CHARS
        if len(text) > limit:
            raise TextTooLong(
                f"text is {len(text):,} characters; this server takes at most {limit:,} "
                "(MAX_TEXT_CHARS): send it in pieces to a session"
            )
        try:
            ids = lm.vocab.encode(text)
        except UnknownWord as e:
            raise BadText(
                f"unknown word {e.word!r} at position {e.position}: the vocabulary of model "
                f"{lm.name!r} is listed at GET /v1/models/{lm.name}"
            ) from None
        if need_words and not ids:
            raise BadText("text has no words: give at least one word of the model's vocabulary")
        return ids

    def check_top_k(self, lm: LoadedModel, top_k: int | None, field: str = "top_k") -> None:
        if top_k is not None and top_k > len(lm.vocab):
            raise BadText(f"{field} is {top_k}; it must be between 1 and {len(lm.vocab)}")

    def check_generation(self, lm: LoadedModel, opts: GenerationOptions) -> set[int]:
        """Validate the options against the model and settings; the ids of the stop words."""
        if opts.max_words > self.settings.MAX_WORDS:
            raise BadText(
                f"max_words is {opts.max_words}; this server generates at most "
                f"{self.settings.MAX_WORDS} (MAX_WORDS)"
            )
        self.check_top_k(lm, opts.top_k)
        stop = set()
        for word in opts.stop:
            tokens = split_words(word)
            if len(tokens) != 1 or tokens[0] not in lm.vocab.words:
                raise BadText(
                    f"stop word {word!r} is not a word of the vocabulary "
                    f"(GET /v1/models/{lm.name} lists them)"
                )
            stop.add(lm.vocab.stoi[tokens[0]])
        return stop

    def next_list(self, lm: LoadedModel, probs: Tensor, top_k: int) -> list[WordProb]:
        return [WordProb(word=lm.vocab.itos[i], prob=p) for i, p in top_words(probs, top_k)]

    # -- stateless ---------------------------------------------------------------------------
    async def next_word(self, req: NextWordRequest) -> NextWordResponse:
        lm = self.model(req.model)
        self.check_top_k(lm, req.top_k)
        ids = self.encode(lm, req.text, need_words=True)
        slot = lm.batcher.slots.alloc()
        try:
            probs = await lm.batcher.step(slot, ids)
        finally:
            lm.batcher.slots.free(slot)
        return NextWordResponse(
            model=lm.name, tokens=lm.vocab.decode(ids), next=self.next_list(lm, probs, req.top_k)
        )

    async def continuation(self, req: ContinuationRequest) -> AsyncIterator[Event]:
        lm = self.model(req.model)
        stop = self.check_generation(lm, req)
        ids = self.encode(lm, req.text, need_words=True)
        slot = lm.batcher.slots.alloc()
        try:
            probs = await lm.batcher.step(slot, ids)
            async for event in self.generate(lm, slot, probs, req, stop, feed_last=False):
                yield event
        finally:
            lm.batcher.slots.free(slot)

    async def continuation_response(self, req: ContinuationRequest) -> ContinuationResponse:
        model = self.model(req.model).name
        words, probs, reason = await collect(self.continuation(req))
        return ContinuationResponse(
            model=model, words=words, probs=probs, text=" ".join(words), finish_reason=reason
        )

    async def generate(
        self,
        lm: LoadedModel,
        slot: int,
        probs: Tensor,
        opts: GenerationOptions,
        stop: set[int],
        feed_last: bool,
        on_fed: Callable[[list[str]], None] | None = None,
    ) -> AsyncIterator[Event]:
        """Words from `probs` on, each fed back into `slot` (the last only if feed_last)."""
        seed = opts.seed if opts.seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        for i in range(opts.max_words):
            idx = choose(probs, opts.temperature, opts.top_k, opts.top_p, generator)
            if idx in stop:
                yield FinishEvent("stop")
                return
            word = lm.vocab.itos[idx]
            yield WordEvent(word, float(probs[idx]))
            if feed_last or i < opts.max_words - 1:
                applied = functools.partial(on_fed, [word]) if on_fed else None
                probs = await lm.batcher.step(slot, [idx], applied)
        yield FinishEvent("length")

    # -- sessions ----------------------------------------------------------------------------
    def session_info(self, s: Session) -> SessionInfo:
        return SessionInfo(
            session_id=s.id,
            model=s.model.name,
            tokens_seen=s.tokens_seen,
            last_words=list(s.last_words),
            created_at=timestamp(s.created),
            expires_at=timestamp(self.sessions.expires_at(s)),
        )

    async def _session_probs(self, session: Session, ids: list[int]) -> Tensor | None:
        """Feed ids (maybe none) into the session; its distribution, None if it saw no word."""
        if ids:
            words = session.model.vocab.decode(ids)
            return await session.model.batcher.step(session.slot, ids, lambda: session.saw(words))
        if session.tokens_seen:
            return await session.model.batcher.step(session.slot, [])
        return None

    async def create_session(self, req: SessionCreateRequest) -> SessionCreated:
        lm = self.model(req.model)
        self.check_top_k(lm, req.top_k)
        ids = self.encode(lm, req.text)
        session = self.sessions.create(lm)
        async with session.lock:
            probs = await self._session_probs(session, ids)
        nxt = self.next_list(lm, probs, req.top_k) if probs is not None else []
        return SessionCreated(**self.session_info(session).model_dump(), next=nxt)

    def list_sessions(self) -> SessionList:
        self.sessions.expire()
        return SessionList(sessions=[self.session_info(s) for s in self.sessions])

    def get_session(self, session_id: str) -> SessionInfo:
        return self.session_info(self.sessions.get(session_id))

    async def delete_session(self, session_id: str) -> None:
        await self.sessions.delete(session_id)

    async def reset_session(self, session_id: str) -> SessionInfo:
        session = self.sessions.get(session_id)
        async with session.lock:
            self._check_alive(session)
            session.model.batcher.slots.zero(session.slot)
            session.tokens_seen, session.last_words = 0, []
        return self.session_info(session)

    def _check_alive(self, session: Session) -> None:
        if not session.alive:  # deleted while this request waited its turn
            raise unknown(session.id)

    async def session_next_word(
        self, session_id: str, req: SessionNextWordRequest
    ) -> SessionNextWordResponse:
        session = self.sessions.get(session_id)
        lm = session.model
        self.check_top_k(lm, req.top_k)
        ids = self.encode(lm, req.text)
        async with session.lock:
            self._check_alive(session)
            probs = await self._session_probs(session, ids)
        self.sessions.touch(session)
        nxt = self.next_list(lm, probs, req.top_k) if probs is not None else []
        return SessionNextWordResponse(
            **self.session_info(session).model_dump(), tokens=lm.vocab.decode(ids), next=nxt
        )

    async def session_continuation(
        self, session_id: str, req: SessionContinuationRequest
    ) -> AsyncIterator[Event]:
        session = self.sessions.get(session_id)
        lm = session.model
        stop = self.check_generation(lm, req)
        ids = self.encode(lm, req.text)
        async with session.lock:
            self._check_alive(session)
            probs = await self._session_probs(session, ids)
            if probs is None:
                raise BadText("the session has seen no word yet: give a text to continue from")
            async for event in self.generate(
                lm, session.slot, probs, req, stop, feed_last=True, on_fed=session.saw
            ):
                yield event
        self.sessions.touch(session)

    async def session_continuation_response(
        self, session_id: str, req: SessionContinuationRequest
    ) -> SessionContinuationResponse:
        words, probs, reason = await collect(self.session_continuation(session_id, req))
        session = self.sessions.get(session_id)
        return SessionContinuationResponse(
            model=session.model.name,
            words=words,
            probs=probs,
            text=" ".join(words),
            finish_reason=reason,
            session_id=session.id,
            tokens_seen=session.tokens_seen,
        )
