"""A Redis session's record: its fields read into a lease (its state opened on the engine) or
into a record for listing, and what a damaged one says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.core.errors import Gone, StateMismatch, UnknownModel
from app.core.redact import clip
from app.engine.registry import LoadedModel, ModelRegistry
from app.engine.sequences import ExportedState, LayoutMismatch, Sequence
from app.serving.sessions import LAST_WORDS, SessionRecord, ended_with

RECORD_FIELDS = ["model", "tokens", "last", "created", "used", "owner", "version"]


@dataclass(eq=False)
class RedisLease:
    """A session leased from Redis: its state opened as a sequence for the request."""

    id: str
    model: LoadedModel
    seq: Sequence
    owner: str
    tokens_seen: int
    last_words: list[str]
    created: float
    used: float = 0.0
    dirty: bool = False  # the state or counters changed: write back
    moved_from: str | None = None  # the model's name before a move, if it moved

    def move(self, model: LoadedModel) -> None:
        seq = model.engine.open()  # first: nothing changes if it cannot open
        self.seq.close()
        if self.moved_from is None:
            self.moved_from = self.model.name
        self.model, self.seq = model, seq
        self.tokens_seen, self.last_words, self.dirty = 0, [], True

    def saw(self, words: list[str]) -> None:
        self.tokens_seen += len(words)
        self.last_words = (self.last_words + words)[-LAST_WORDS:]
        self.dirty = True

    def reset(self) -> None:
        self.seq.reset()
        self.tokens_seen, self.last_words, self.dirty = 0, [], True


def open_lease(registry: ModelRegistry, sid: str, owner: str, raw: list[bytes]) -> RedisLease:
    """The session whose Redis fields (HGETALL) are `raw`, its state opened on its model's
    engine; StateMismatch (409) if it is damaged or does not fit a loaded model."""
    try:
        fields = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
        name = fields["model"].decode()
        version = int(fields["version"]) if "version" in fields else None
        saved = ExportedState(fields["dtype"].decode(), fields["shape"].decode(), fields["state"])
        tokens, last, created = (
            int(fields["tokens"]),
            words(fields["last"]),
            int(fields["created"]),
        )
        used = int(fields["used"]) / 1000
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
        raise damaged(sid) from None
    try:
        model = registry.version(name, version)
    except UnknownModel:
        raise StateMismatch(
            f"session {clip(sid)} belongs to model {name!r}, which this server has not loaded"
        ) from None
    except Gone:
        raise ended_with(sid, f"{name}@{version}") from None
    try:
        seq = model.engine.open(saved)  # the last step: nothing can fail once it is open
    except LayoutMismatch as e:
        dtype, shape = e.layout
        raise StateMismatch(
            f"session {clip(sid)} holds {e.problem}, "
            f"but model {name!r} now has states of shape ({shape}) {dtype}: "
            "the model was replaced; delete the session and start a new one"
        ) from None
    return RedisLease(sid, model, seq, owner, tokens, last, created / 1000, used=used)


def parse_record(sid: str, got: list[Any], owner: str, ttl_s: float) -> SessionRecord | None:
    """The record of a session's fields (RECORD_FIELDS); None if gone or not the owner's;
    StateMismatch (409) if the record is damaged."""
    if got[0] is None or (got[5] or b"-").decode() != owner:
        return None
    model, tokens, last, created, used, _, version = got
    try:
        return SessionRecord(
            sid,
            model.decode(),
            int(version) if version is not None else 0,
            int(tokens),
            words(last),
            int(created) / 1000,
            int(used) / 1000 + ttl_s,
        )
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise damaged(sid) from None


def words(raw: bytes | None) -> list[str]:
    """A record's `last` field: a JSON list of words; ValueError if it is not one."""
    last = json.loads(raw) if raw is not None else None
    if not isinstance(last, list) or not all(isinstance(w, str) for w in last):
        raise ValueError("not a list of words")
    return last


def damaged(sid: str) -> StateMismatch:
    return StateMismatch(
        f"session {clip(sid)} is damaged in the session store (a field of its Redis record "
        "cannot be read): delete it and start a new one"
    )
