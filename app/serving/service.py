"""The serving layer: handed the models and the sessions, it does the work of every route."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import random
import secrets
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from app.core.config import Settings
from app.core.errors import BadState, BadText, OverLimit, ServiceError, TextTooLong
from app.core.observability import answered_by
from app.core.redact import clip, clip_number
from app.core.security import ANONYMOUS
from app.engine.generation import Generation
from app.engine.params import SamplingParams
from app.engine.registry import LoadedModel, ModelRegistry
from app.engine.sequences import LayoutMismatch
from app.schemas.models import ModelDetail, ModelInfo, ModelList
from app.schemas.openai import OpenAIModel
from app.schemas.predict import (
    ContinuationRequest,
    ContinuationResponse,
    FinishReason,
    GenerationOptions,
    NextWordRequest,
)
from app.schemas.sessions import (
    SessionContinuationRequest,
    SessionContinuationResponse,
    SessionCreated,
    SessionCreateRequest,
    SessionInfo,
    SessionList,
    SessionNextWordRequest,
    SessionState,
)
from app.serving.prefix_cache import PrefixCache
from app.serving.runs import Choice, Run
from app.serving.sessions import Lease, Seed, SessionRecord, SessionStore, applied
from app.serving.state_documents import StateSigner
from app.serving.streams import GenerationStream
from model_store import UnknownWord, split_words

log = logging.getLogger("app.service")


OWNED_BY = "human-numbers"  # OpenAI's `owned_by` of our models


NextWord = dict[str, Any]  # a WordProb's fields: "word", "prob"
# The answers of the two next-word routes, the busiest: their response model's fields, in its
# order, as plain JSON types (datetimes in UTC). FastAPI validates them against the route's
# response model; the fast path writes them with orjson, the same bytes without building a
# model (tests/app/api/test_fastpath.py holds both equal).
Plain = dict[str, Any]


def timestamp(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def checkpoint_created(meta: dict[str, Any]) -> int:
    """When a checkpoint was written, in Unix seconds (0 if meta.json does not say)."""
    try:
        return int(datetime.fromisoformat(str(meta["created"])).timestamp())
    except (KeyError, ValueError):
        return 0


class PredictionService:
    def __init__(self, registry: ModelRegistry, sessions: SessionStore, settings: Settings):
        self.registry = registry
        self.sessions = sessions
        self.settings = settings
        self.prefix_cache = PrefixCache(
            int(settings.PREFIX_CACHE_MB * 2**20), settings.PREFIX_CACHE_SCOPE == "per_key"
        )
        registry.on_unloaded = self.prefix_cache.drop  # a gone version's states with it
        self.signer = StateSigner(tuple(map(SecretStr, settings.state_signing_keys())))

    # -- models ----------------------------------------------------------------------------
    def model(self, name: str | None) -> LoadedModel:
        """The version that serves new work under `name` (NAME, NAME@VERSION or None for
        the default model): it answers the request (its X-Model-Version header)."""
        lm = self.registry.resolve(name)
        answered_by.set(lm.label)
        return lm

    def leased(self, lease: Lease) -> LoadedModel:
        """A session's model version (the one that made its state): it answers the request."""
        lm = lease.model
        answered_by.set(lm.label)
        return lm

    def model_info(self, lm: LoadedModel) -> ModelInfo:
        ckpt = lm.checkpoint
        entry = self.registry.entries.get(lm.name)
        current = entry is not None and entry.default == lm.version
        return ModelInfo(
            id=lm.name if current else lm.key,
            created=checkpoint_created(ckpt.meta),
            owned_by=OWNED_BY,
            name=lm.name,
            variant=ckpt.config.variant,
            version=ckpt.ref.version,
            status=lm.status,
            share=entry.share(lm.version) if entry is not None else 0.0,
            parameters=lm.parameters,
            hidden_size=ckpt.config.hidden,
            vocab_size=ckpt.config.vocab_size,
            valid_accuracy=ckpt.valid_accuracy,
            device=str(lm.device),
            sha256=ckpt.sha256,
            metrics={k: v for k, v in (ckpt.metrics or [{}])[-1].items() if k != "seconds"},
            default=lm.name == self.registry.default and current,
            current=current,
        )

    def list_models(self) -> ModelList:
        """Every loaded version, each name's current default first: OpenAI's list names each
        model once (its id is the name) and each other version as NAME@VERSION."""
        models = []
        for name in sorted(self.registry.entries):
            entry = self.registry.entries[name]
            versions = sorted(entry.versions.values(), key=lambda lm: lm.version)
            versions.sort(key=lambda lm: lm.version != entry.default)  # stable: default first
            models += [self.model_info(lm) for lm in versions]
        data = [OpenAIModel(id=m.id, created=m.created, owned_by=m.owned_by) for m in models]
        return ModelList(data=data, models=models, default=self.registry.default)

    def get_model(self, name: str) -> ModelDetail:
        lm = self.model(name)
        return ModelDetail(
            **self.model_info(lm).model_dump(),
            vocab=list(lm.vocab.itos),
            words=list(lm.vocab.typable),
        )

    # -- checks shared by the routes ---------------------------------------------------------
    def check_length(self, text: str) -> None:
        """413 past MAX_TEXT_CHARS."""
        limit = self.settings.MAX_TEXT_CHARS
        if len(text) > limit:
            raise TextTooLong(
                f"text is {len(text):,} characters; this server takes at most {limit:,} "
                "(MAX_TEXT_CHARS): send it in pieces to a session"
            )

    def encode(self, lm: LoadedModel, text: str, need_words: bool = False) -> list[int]:
        """Token ids of `text`; 413 past MAX_TEXT_CHARS, 422 naming an unknown word."""
        return self.encode_tokens(lm, text, need_words)[1]

    def encode_tokens(
        self, lm: LoadedModel, text: str, need_words: bool = False
    ) -> tuple[list[str], list[int]]:
        """`encode`, with the tokens as the vocabulary spells them (`decode(ids)`)."""
        self.check_length(text)
        try:
            tokens, ids = lm.vocab.encode_tokens(text)
        except UnknownWord as e:
            raise BadText(
                f"unknown word {clip(e.word)} at position {e.position}: the vocabulary of model "
                f"{lm.name!r} is listed at GET /v1/models/{lm.name}"
            ) from None
        if need_words and not ids:
            raise BadText("text has no words: give at least one word of the model's vocabulary")
        return tokens, ids

    def check_top_k(self, lm: LoadedModel, top_k: int | None) -> None:
        if top_k is not None and top_k > len(lm.vocab):
            raise BadText(
                f"top_k is {clip_number(top_k)}; it must be between 1 and {len(lm.vocab)}"
            )

    def sampling(self, lm: LoadedModel, opts: GenerationOptions, feed_last: bool) -> SamplingParams:
        """The engine's sampling parameters for these options, once checked against model and
        settings."""
        if opts.max_words > self.settings.MAX_WORDS:
            raise BadText(
                f"max_words is {clip_number(opts.max_words)}; this server generates at most "
                f"{self.settings.MAX_WORDS} (MAX_WORDS)"
            )
        self.check_top_k(lm, opts.top_k)
        stop = set()
        for word in opts.stop:
            tokens = split_words(word)
            if len(tokens) != 1 or tokens[0] not in lm.vocab.words:
                raise BadText(
                    f"stop word {clip(word)} is not a word of the vocabulary "
                    f"(GET /v1/models/{lm.name} lists them)"
                )
            stop.add(lm.vocab.stoi[tokens[0]])
        return SamplingParams(
            max_words=opts.max_words,
            temperature=opts.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            rng=random.Random(opts.seed if opts.seed is not None else secrets.randbits(63)),
            stop=frozenset(stop),
            feed_last=feed_last,
        )

    def admit_tokens(self, ids: list[int], max_words: int) -> None:
        """OverLimit when a continuation's text and max_words pass MAX_REQUEST_TOKENS (with
        the defaults MAX_TEXT_CHARS and MAX_WORDS keep it far below)."""
        limit = self.settings.MAX_REQUEST_TOKENS
        if len(ids) + max_words > limit:
            raise OverLimit(
                f"this request feeds and generates {len(ids) + max_words:,} tokens "
                f"({len(ids):,} of text + max_words {max_words}); this server takes at most "
                f"{limit:,} for one request (MAX_REQUEST_TOKENS)",
                "max_words",
            )

    def next_list(self, lm: LoadedModel, top: list[tuple[int, float]]) -> list[NextWord]:
        itos = lm.vocab.itos  # validated with the answer they go into, in one call
        return [{"word": itos[i], "prob": p} for i, p in top]

    # -- stateless ---------------------------------------------------------------------------
    async def next_word(self, req: NextWordRequest, owner: str = ANONYMOUS) -> Plain:
        """NextWordResponse's fields (see `Plain`); fed from the prefix cache's state after
        the text's longest cached prefix (the owner's own under PREFIX_CACHE_SCOPE=per_key)."""
        lm = self.model(req.model)
        self.check_top_k(lm, req.top_k)
        tokens, ids = self.encode_tokens(lm, req.text, need_words=True)
        top = await self.prefix_cache.step(lm, owner, ids, req.top_k)
        return {
            "model": lm.name,
            "version": lm.version,
            "tokens": tokens,
            "next": self.next_list(lm, top),
        }

    async def continuation(
        self, req: ContinuationRequest, owner: str = ANONYMOUS
    ) -> ContinuationResponse:
        lm = self.model(req.model)
        params, ids = self.continuation_input(lm, req, None)
        gen = await self.prefix_cache.generate(lm, owner, ids, params)
        return ContinuationResponse(**generated(lm, gen))

    def continuation_input(
        self,
        lm: LoadedModel,
        req: ContinuationRequest | SessionContinuationRequest,
        lease: Lease | None,
    ) -> tuple[SamplingParams, list[int]]:
        """A continuation's sampling parameters and text ids, checked (a session's: its
        words advance it, and with no text it continues from what it saw)."""
        params = self.sampling(lm, req, feed_last=lease is not None)
        ids = self.encode(lm, req.text, need_words=lease is None)
        self.admit_tokens(ids, req.max_words)
        if lease is not None and not ids and not lease.tokens_seen:
            raise BadText("the session has seen no word yet: give a text to continue from")
        return params, ids

    async def continuation_stream(
        self, req: ContinuationRequest, owner: str = ANONYMOUS
    ) -> GenerationStream:
        """A continuation's words as they come (see `stream`), fed from the prefix cache as
        `continuation` is."""
        lm = self.model(req.model)
        return await self.stream(lm, req, None, contextlib.AsyncExitStack(), owner)

    async def stream(
        self,
        lm: LoadedModel,
        req: ContinuationRequest | SessionContinuationRequest,
        lease: Lease | None,
        stack: contextlib.AsyncExitStack,
        owner: str = ANONYMOUS,
    ) -> GenerationStream:
        """A continuation's stream, once its first word came: one that fails before any
        raises its error. A session's (its `lease` entered in `stack`) is held until the
        stream ends; if it ends early, the session keeps its text and the words sent. A
        stateless one starts from the prefix cache's state (the owner's own under per_key)."""
        choice: Choice | None = None
        try:
            params, ids = self.continuation_input(lm, req, lease)
            choice = Choice(0, params)
            if lease is None:
                choice.seq, choice.fed = await self.prefix_cache.open(lm, owner, ids)
            stream = GenerationStream(Run(lm.engine, [ids], [choice], lease), stack)
            stream.start()
        except BaseException:
            if lease is None and choice is not None and choice.seq is not None:
                choice.seq.close()  # opened from the cache, never handed to a run
            await stack.aclose()
            raise
        await stream.first()
        return stream

    # -- sessions ----------------------------------------------------------------------------
    def session_fields(self, r: SessionRecord) -> dict[str, Any]:
        """SessionInfo's fields of a record, for the answers that extend it (each model
        validated once, in pydantic's core: `model_construct`, in Python, costs more)."""
        return {
            "session_id": r.id,
            "model": r.model,
            "version": r.version,
            "tokens_seen": r.tokens_seen,
            "last_words": list(r.last_words),
            "created_at": timestamp(r.created),
            "expires_at": timestamp(r.expires_at),
        }

    def session_info(self, r: SessionRecord) -> SessionInfo:
        return SessionInfo(**self.session_fields(r))

    async def _session_step(self, lease: Lease, ids: list[int], top_k: int) -> list[NextWord]:
        """Feed ids (maybe none) into the session; its top words, [] if it saw no word yet."""
        if not ids and not lease.tokens_seen:
            return []
        top = await lease.seq.step(ids, top_k, applied(lease))
        return self.next_list(lease.model, top)

    async def create_session(
        self, req: SessionCreateRequest, owner: str = ANONYMOUS
    ) -> SessionCreated:
        # checks come first: a refused request creates nothing
        seed = None
        if req.state is None:
            lm = self.model(req.model)
        elif req.model is not None:
            raise BadText(
                "give `model` or `state`, not both: a restored session stays on the model "
                "version its state names"
            )
        else:  # the text, if any, is fed after the restored state
            lm, seed = self.signer.read(req.state, self.registry)
            answered_by.set(lm.label)
        self.check_top_k(lm, req.top_k)
        ids = self.encode(lm, req.text)
        try:
            record = await self.sessions.create(lm, owner, seed)
        except LayoutMismatch as e:  # checked by the document already: a second guard
            raise BadState(f"state does not fit model {lm.key}: {e}") from None
        # nothing to feed nor to answer (a restored state has a distribution): no step, no
        # lease (an idle session stays small)
        if not ids and not record.tokens_seen:
            return SessionCreated(**self.session_fields(record), next=[])
        try:
            async with self.sessions.lease(record.id, owner) as lease:
                nxt = await self._session_step(lease, ids, req.top_k)
        except BaseException:  # refused (a full queue), failed or cancelled: leave no orphan
            with contextlib.suppress(ServiceError):
                await asyncio.shield(self.sessions.delete(record.id, owner))
            raise
        info = self.session_fields(self.sessions.record(lease))
        return SessionCreated(**info, next=nxt)

    async def fork_session(self, session_id: str, owner: str = ANONYMOUS) -> SessionInfo:
        """A new session of the same owner with the session's state, version and counters;
        both go on independently. The source is held while its state is copied."""
        async with self.sessions.lease(session_id, owner) as lease:
            lm = self.leased(lease)
            record = await self.sessions.create(lm, owner, Seed.of(lease), spare=lease.id)
        return self.session_info(record)

    async def session_state(self, session_id: str, owner: str = ANONYMOUS) -> SessionState:
        """The session's state as a signed document (app.serving.state_documents)."""
        self.signer.check_enabled()  # 501 before the session is looked up
        async with self.sessions.lease(session_id, owner) as lease:
            lm = self.leased(lease)
            seed = Seed.of(lease)
        return self.signer.document(lm, seed)

    async def list_sessions(
        self, owner: str = ANONYMOUS, limit: int = 100, cursor: str | None = None
    ) -> SessionList:
        records, last = await self.sessions.page(owner, limit, decode_cursor(cursor))
        return SessionList(
            sessions=[self.session_info(r) for r in records],
            next_cursor=encode_cursor(last) if last is not None else None,
        )

    async def get_session(self, session_id: str, owner: str = ANONYMOUS) -> SessionInfo:
        return self.session_info(await self.sessions.describe(session_id, owner))

    async def delete_session(self, session_id: str, owner: str = ANONYMOUS) -> None:
        await self.sessions.delete(session_id, owner)

    async def reset_session(
        self, session_id: str, owner: str = ANONYMOUS, model: str | None = None
    ) -> SessionInfo:
        """Back to the start state; on `model` (NAME by its split or default, NAME@VERSION)
        when given: the way to move a session to another model or version."""
        async with self.sessions.lease(session_id, owner) as lease:
            if model is None:
                self.leased(lease)
                lease.reset()
            else:
                lease.move(self.model(model))
        return self.session_info(self.sessions.record(lease))

    async def session_next_word(
        self, session_id: str, req: SessionNextWordRequest, owner: str = ANONYMOUS
    ) -> Plain:
        """SessionNextWordResponse's fields (see `Plain`)."""
        async with self.sessions.lease(session_id, owner) as lease:
            lm = self.leased(lease)  # checks come first: a bad request changes nothing
            self.check_top_k(lm, req.top_k)
            tokens, ids = self.encode_tokens(lm, req.text)
            nxt = await self._session_step(lease, ids, req.top_k)
        return {
            **self.session_fields(self.sessions.record(lease)),
            "tokens": tokens,
            "next": nxt,
        }

    async def session_continuation(
        self, session_id: str, req: SessionContinuationRequest, owner: str = ANONYMOUS
    ) -> SessionContinuationResponse:
        async with self.sessions.lease(session_id, owner) as lease:
            lm = self.leased(lease)  # checks come first: a bad request changes nothing
            params, ids = self.continuation_input(lm, req, lease)
            gen = await lease.seq.generate(ids, params, applied(lease))
        return SessionContinuationResponse(
            **generated(lm, gen), session_id=lease.id, tokens_seen=lease.tokens_seen
        )

    async def session_continuation_stream(
        self, session_id: str, req: SessionContinuationRequest, owner: str = ANONYMOUS
    ) -> GenerationStream:
        """The session continuation's words as they come (see `stream`)."""
        stack = contextlib.AsyncExitStack()
        lease = await stack.enter_async_context(self.sessions.lease(session_id, owner))
        return await self.stream(self.leased(lease), req, lease, stack)


def encode_cursor(session_id: str) -> str:
    return base64.urlsafe_b64encode(session_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        if not after:
            raise ValueError("empty")
        return after
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadText(
            f"cursor {cursor[:40]!r} is not one this server gave: pass next_cursor of the "
            "previous page as it is"
        ) from None


def generated(lm: LoadedModel, gen: Generation) -> dict[str, Any]:
    """The fields of a continuation response for a finished generation."""
    assert gen.finish in ("stop", "length"), f"generation not finished: {gen.finish}"
    finish: FinishReason = gen.finish  # type: ignore[assignment]
    words = lm.vocab.decode(gen.words)
    return {
        "model": lm.name,
        "version": lm.version,
        "words": words,
        "probs": gen.probs,
        "text": " ".join(words),
        "finish_reason": finish,
    }
