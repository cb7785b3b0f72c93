"""Live sessions: who owns which state, for how long, in what order requests apply.

`SessionStore` is the interface the service uses; `MemorySessionStore` keeps sessions in
this process (the default), `app.serving.redis_sessions.RedisSessionStore` in Redis, shared
by replicas. A request works on a session through a *lease*: while it is held, the
session's state sits in a slot of its model's batcher and no other request touches it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from app.core.errors import AtCapacity, UnknownSession
from app.core.redact import clip
from app.engine.registry import LoadedModel

LAST_WORDS = 10  # words of its text a session remembers for display


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a session is, for display."""

    id: str
    model: str
    tokens_seen: int
    last_words: list[str]
    created: float
    expires_at: float

    @classmethod
    def of(cls, lease: Lease, created: float, expires_at: float) -> SessionRecord:
        return cls(
            lease.id,
            lease.model.name,
            lease.tokens_seen,
            list(lease.last_words),
            created,
            expires_at,
        )


class Lease(Protocol):
    """A session held by one request: its state is in `slot` of `model`'s batcher."""

    id: str
    model: LoadedModel
    slot: int
    tokens_seen: int
    last_words: list[str]

    def saw(self, words: list[str]) -> None: ...

    def reset(self) -> None: ...


class SessionStore(abc.ABC):
    ttl_s: float

    @abc.abstractmethod
    async def create(self, model: LoadedModel) -> SessionRecord:
        """A new session at the zero state; AtCapacity when full and not evicting."""

    @abc.abstractmethod
    def lease(self, session_id: str) -> contextlib.AbstractAsyncContextManager[Lease]:
        """Hold a session for one request (waiting for the requests before it)."""

    @abc.abstractmethod
    def record(self, lease: Lease) -> SessionRecord:
        """The record of a session just used through `lease`."""

    @abc.abstractmethod
    async def describe(self, session_id: str) -> SessionRecord: ...

    @abc.abstractmethod
    async def all(self) -> list[SessionRecord]: ...

    @abc.abstractmethod
    async def delete(self, session_id: str) -> None: ...

    @abc.abstractmethod
    async def expire(self) -> int:
        """Drop idle sessions past their TTL (where the backend does not itself); how many."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Live sessions by model, for the metrics (may lag a few seconds)."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise NotReady if the store cannot serve (the readiness probe)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the store holds."""


@dataclass(eq=False, slots=True)
class Session:
    id: str
    model: LoadedModel
    slot: int
    created: float
    last_used: float
    tokens_seen: int = 0
    last_words: list[str] = field(default_factory=list)
    alive: bool = True  # False once deleted, expired or evicted
    _lock: asyncio.Lock | None = None  # made on first use: an idle session costs less

    @property
    def lock(self) -> asyncio.Lock:
        """Requests to one session apply one at a time, in arrival order (the lock is FIFO)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def busy(self) -> bool:
        return self._lock is not None and self._lock.locked()

    def saw(self, words: list[str]) -> None:
        self.tokens_seen += len(words)
        self.last_words = (self.last_words + words)[-LAST_WORDS:]

    def reset(self) -> None:
        self.model.batcher.slots.zero(self.slot)
        self.tokens_seen, self.last_words = 0, []


class MemorySessionStore(SessionStore):
    """In-process sessions, least recently used first; TTL expiry and a cap on their number.

    The dict is kept in order of last use, so the expired sessions and the eviction victim
    are found at its front without scanning the rest.
    """

    def __init__(
        self,
        ttl_s: float,
        max_sessions: int,
        policy: str = "reject",
        clock: Callable[[], float] = time.time,
    ):
        assert policy in ("reject", "evict"), f"unknown cap policy {policy!r}"
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.policy = policy
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def expires_at(self, session: Session) -> float:
        return session.last_used + self.ttl_s

    async def create(self, model: LoadedModel) -> SessionRecord:
        return self.record(self.new(model))

    def new(self, model: LoadedModel) -> Session:
        self.drop_expired()
        if len(self._sessions) >= self.max_sessions:
            victim = next((s for s in self._sessions.values() if not s.busy), None)
            if self.policy == "reject" or victim is None:
                raise AtCapacity(
                    f"the server holds its maximum of {self.max_sessions} sessions: "
                    "delete one you no longer need, or retry later",
                    retry_after=60,
                )
            self._drop(victim)
        now = self.clock()
        session = Session(secrets.token_urlsafe(16), model, model.batcher.slots.alloc(), now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        """A live session, marked as just used; UnknownSession if none or expired."""
        session = self._sessions.get(session_id)
        if session is None:
            raise unknown(session_id)
        now = self.clock()
        if now >= self.expires_at(session) and not session.busy:
            self._drop(session)
            raise UnknownSession(f"session {clip(session_id)} expired after {self.ttl_s:g} s idle")
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def touch(self, session: Session) -> None:
        session.last_used = self.clock()
        if session.alive:
            self._sessions.move_to_end(session.id)

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str) -> AsyncIterator[Lease]:
        session = self.get(session_id)
        async with session.lock:
            if not session.alive:  # deleted while this request waited its turn
                raise unknown(session_id)
            yield session
        self.touch(session)

    def record(self, lease: Lease) -> SessionRecord:
        assert isinstance(lease, Session)
        return SessionRecord.of(lease, lease.created, self.expires_at(lease))

    async def describe(self, session_id: str) -> SessionRecord:
        return self.record(self.get(session_id))

    async def all(self) -> list[SessionRecord]:
        self.drop_expired()
        return [self.record(s) for s in self]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self._sessions.values():
            counts[s.model.name] = counts.get(s.model.name, 0) + 1
        return counts

    async def expire(self) -> int:
        return self.drop_expired()

    async def check(self) -> None:
        return None  # in-process: always able to serve

    async def close(self) -> None:
        for s in list(self._sessions.values()):
            self._drop(s)

    async def delete(self, session_id: str) -> None:
        """Delete after the requests already queued on the session have run."""
        session = self._sessions.get(session_id)
        if session is None:
            raise unknown(session_id)
        async with session.lock:
            self._drop(session)

    def drop_expired(self) -> int:
        """Drop idle sessions past their TTL; how many."""
        now = self.clock()
        dead = []
        for s in self._sessions.values():  # oldest use first
            if now < self.expires_at(s):
                break
            if not s.busy:  # a long request holds it: it goes once done, if still idle
                dead.append(s)
        for s in dead:
            self._drop(s)
        return len(dead)

    def _drop(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is not None:
            session.alive = False
            session.model.batcher.slots.free(session.slot)


def unknown(session_id: str) -> UnknownSession:
    return UnknownSession(
        f"no session {clip(session_id)}: it never existed, was deleted or expired"
    )
