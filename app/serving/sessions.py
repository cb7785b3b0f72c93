"""Live sessions: who owns which state, for how long, in what order requests apply.

`SessionStore` is the interface the service uses; `MemorySessionStore` keeps sessions in
this process (the default), `app.serving.redis_sessions.RedisSessionStore` in Redis, shared
by replicas. A request works on a session through a *lease*: while it is held, the
session's state is an open sequence of its model's engine (`lease.seq`) and no other request
touches it. A store never sees where the engine keeps that state.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sortedcontainers import SortedList

from app.core import tracing
from app.core.errors import AtCapacity, Gone, UnknownSession
from app.core.redact import clip
from app.core.security import ANONYMOUS
from app.engine.registry import LoadedModel
from app.engine.sequences import Applied, ExportedState, Sequence

LAST_WORDS = 10  # words of its text a session remembers for display


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a session is, for display."""

    id: str
    model: str
    version: int
    tokens_seen: int
    last_words: list[str]
    created: float
    expires_at: float

    @classmethod
    def of(cls, lease: Lease, created: float, expires_at: float) -> SessionRecord:
        return cls(
            lease.id,
            lease.model.name,
            lease.model.version,
            lease.tokens_seen,
            list(lease.last_words),
            created,
            expires_at,
        )


@dataclass(frozen=True, slots=True)
class Seed:
    """What a new session starts from other than the start state: a fork's or a restored
    document's state and counters."""

    saved: ExportedState
    tokens_seen: int
    last_words: list[str]

    @classmethod
    def of(cls, lease: Lease) -> Seed:
        return cls(lease.seq.export(), lease.tokens_seen, list(lease.last_words))


class Lease(Protocol):
    """A session held by one request: its state is the open sequence `seq` of `model`."""

    id: str
    model: LoadedModel
    seq: Sequence
    tokens_seen: int
    last_words: list[str]

    def saw(self, words: list[str]) -> None: ...

    def reset(self) -> None: ...

    def move(self, model: LoadedModel) -> None:
        """Start again at `model`'s start state (another model or version)."""


def applied(lease: Lease) -> Applied:
    """The engine's callback that counts each piece of ids into the session's record (its
    tokens seen, its last words) as soon as its state holds them."""
    decode = lease.model.vocab.decode
    return lambda ids: lease.saw(decode(ids))


class SessionStore(abc.ABC):
    """Sessions belong to an owner (an API key's id, or ANONYMOUS): a session of another
    owner is, to every call, a session that does not exist. Only work on a session (a
    lease) counts as use and pushes back its expiry; reading or listing it does not."""

    ttl_s: float
    in_process: bool  # the sessions live in this process (their states are open sequences)

    @abc.abstractmethod
    async def create(
        self,
        model: LoadedModel,
        owner: str,
        seed: Seed | None = None,
        spare: str | None = None,
    ) -> SessionRecord:
        """A new session at the start state, or at `seed`'s state and counters (LayoutMismatch
        if it does not fit `model`: nothing is created); AtCapacity when full (or the owner's
        share is). The session `spare` (a fork's source) is never evicted to make room."""

    @abc.abstractmethod
    def lease(self, session_id: str, owner: str) -> contextlib.AbstractAsyncContextManager[Lease]:
        """Hold a session for one request (waiting for the requests before it)."""

    @abc.abstractmethod
    def record(self, lease: Lease) -> SessionRecord:
        """The record of a session just used through `lease`."""

    @abc.abstractmethod
    async def describe(self, session_id: str, owner: str) -> SessionRecord: ...

    @abc.abstractmethod
    async def page(
        self, owner: str, limit: int, after: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        """The owner's live sessions in order of id, the first `limit` after id `after`;
        and the id to continue after, None when there are no more."""

    @abc.abstractmethod
    async def delete(self, session_id: str, owner: str) -> None:
        """Delete, once the requests already holding or queued on the session are done."""

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

    @abc.abstractmethod
    async def holds(self, model: LoadedModel) -> bool:
        """Some session lives on `model`'s version (a draining one waits for them)."""

    @abc.abstractmethod
    async def end_model(self, model: LoadedModel) -> int:
        """`model`'s version is being unloaded: end the sessions on it that this store keeps
        in the process (their late requests get 410, naming it); how many."""


def owner_full(max_per_owner: int) -> AtCapacity:
    return AtCapacity(
        f"this API key holds its maximum of {max_per_owner} sessions (MAX_SESSIONS_PER_KEY): "
        "delete one you no longer need, or wait for idle ones to expire",
        retry_after=60,
    )


def server_full(max_sessions: int) -> AtCapacity:
    return AtCapacity(
        f"the server holds its maximum of {max_sessions} sessions (MAX_SESSIONS): "
        "delete one you no longer need, or retry later",
        retry_after=60,
    )


@dataclass(eq=False, slots=True)
class Session:
    id: str
    model: LoadedModel
    seq: Sequence  # open while the session lives
    owner: str
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
        self.seq.reset()
        self.tokens_seen, self.last_words = 0, []

    def move(self, model: LoadedModel) -> None:
        seq = model.engine.open()  # first: nothing changes if it cannot open
        self.seq.close()
        self.model, self.seq = model, seq
        self.tokens_seen, self.last_words = 0, []


class MemorySessionStore(SessionStore):
    in_process = True

    """In-process sessions, least recently used first; TTL expiry and a cap on their number.

    The dict is kept in order of last use, so the expired sessions are found at its front
    without scanning the rest. Each owner's ids are also kept sorted, for its share of the
    cap and for listing it page by page, and in order of use: with the `evict` policy, an
    owner that needs room evicts its own least recently used session, never another's.
    """

    def __init__(
        self,
        ttl_s: float,
        max_sessions: int,
        policy: str = "reject",
        clock: Callable[[], float] = time.time,
        max_per_owner: int | None = None,
    ):
        assert policy in ("reject", "evict"), f"unknown cap policy {policy!r}"
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.policy = policy
        self.clock = clock
        self.max_per_owner = max_per_owner  # None: no per-owner share; never for ANONYMOUS
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._owned: dict[str, SortedList] = {}
        self._used: dict[str, OrderedDict[str, Session]] = {}  # by owner, least recent first
        # sessions ended with their model version: id -> (owner, NAME@VERSION, until when
        # a request is told so rather than "no session")
        self._ended: dict[str, tuple[str, str, float]] = {}
        self.spans = tracing.StoreSpans("memory")

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def expires_at(self, session: Session) -> float:
        return session.last_used + self.ttl_s

    async def create(
        self,
        model: LoadedModel,
        owner: str = ANONYMOUS,
        seed: Seed | None = None,
        spare: str | None = None,
    ) -> SessionRecord:
        with self.spans.op("create") as span:
            session = self.new(model, owner, seed)
            if span is not None:
                tracing.tag(span, session.id)
        return self.record(session)

    def new(self, model: LoadedModel, owner: str = ANONYMOUS, seed: Seed | None = None) -> Session:
        seq = model.engine.open(seed.saved if seed is not None else None)  # may refuse it
        try:
            session = self._admit(model, owner, seq)
        except BaseException:
            seq.close()
            raise
        if seed is not None:
            session.tokens_seen, session.last_words = seed.tokens_seen, list(seed.last_words)
        return session

    def _admit(self, model: LoadedModel, owner: str, seq: Sequence) -> Session:
        self.drop_expired()
        cap = self.max_per_owner
        if cap is not None and owner != ANONYMOUS and len(self._owned.get(owner, ())) >= cap:
            self._make_room(owner, owner_full(cap))
        if len(self._sessions) >= self.max_sessions:
            self._make_room(owner, server_full(self.max_sessions))
        now = self.clock()
        session = Session(secrets.token_urlsafe(16), model, seq, owner, now, now)
        self._sessions[session.id] = session
        self._owned.setdefault(owner, SortedList()).add(session.id)
        self._used.setdefault(owner, OrderedDict())[session.id] = session
        return session

    def _make_room(self, owner: str, full: AtCapacity) -> None:
        """Evict the owner's least recently used idle session (policy `evict`), else raise
        `full`: an owner never makes room with another owner's sessions."""
        own = self._used.get(owner)
        victim = next((s for s in own.values() if not s.busy), None) if own else None
        if self.policy == "reject" or victim is None:
            raise full
        self._drop(victim)

    def live(self, session_id: str, owner: str = ANONYMOUS) -> Session:
        """The owner's live session; UnknownSession if none, another owner's, or expired."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner:
            ended = self._ended.get(session_id)
            if session is None and ended is not None and ended[0] == owner:
                raise ended_with(session_id, ended[1])
            raise unknown(session_id)
        if self.clock() >= self.expires_at(session) and not session.busy:
            self._drop(session)
            raise unknown(session_id)
        return session

    def get(self, session_id: str, owner: str = ANONYMOUS) -> Session:
        """The owner's live session, marked as just used."""
        session = self.live(session_id, owner)
        self.touch(session)
        return session

    def touch(self, session: Session) -> None:
        session.last_used = self.clock()
        if session.alive:
            self._sessions.move_to_end(session.id)
            self._used[session.owner].move_to_end(session.id)

    def lease(self, session_id: str, owner: str = ANONYMOUS) -> Held:
        return Held(self, session_id, owner)

    def record(self, lease: Lease) -> SessionRecord:
        assert isinstance(lease, Session)
        return SessionRecord.of(lease, lease.created, self.expires_at(lease))

    async def describe(self, session_id: str, owner: str = ANONYMOUS) -> SessionRecord:
        return self.record(self.live(session_id, owner))

    async def page(
        self, owner: str, limit: int, after: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        self.drop_expired()
        ids = self._owned.get(owner)
        if ids is None:
            return [], None
        got = list(itertools.islice(ids.irange(minimum=after, inclusive=(False, True)), limit + 1))
        records = [self.record(self._sessions[i]) for i in got[:limit]]
        return records, got[limit - 1] if len(got) > limit else None

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

    async def holds(self, model: LoadedModel) -> bool:
        return any(s.model is model for s in self._sessions.values())

    async def end_model(self, model: LoadedModel) -> int:
        ended = [s for s in self._sessions.values() if s.model is model]
        for s in ended:
            self._ended[s.id] = (s.owner, model.key, self.expires_at(s))
            self._drop(s)
        return len(ended)

    async def delete(self, session_id: str, owner: str = ANONYMOUS) -> None:
        with self.spans.op("delete", session_id):
            session = self.live(session_id, owner)
            async with session.lock:
                if not session.alive:  # deleted by the request before this one
                    raise unknown(session_id)
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
        if self._ended:
            for sid in [i for i, (_, _, until) in self._ended.items() if until <= now]:
                del self._ended[sid]
        return len(dead)

    def _drop(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is not None:
            session.alive = False
            session.seq.close()
            owned, used = self._owned[session.owner], self._used[session.owner]
            owned.remove(session.id)
            del used[session.id]
            if not owned:
                del self._owned[session.owner], self._used[session.owner]


class Held:
    """A lease on a memory session: the session's turn (its lock) from `async with` to its
    end, and a use that pushes back its expiry when the request ends well. (A class: an
    `asynccontextmanager` costs a generator and its frames on every request.)"""

    __slots__ = ("owner", "session", "session_id", "store")

    def __init__(self, store: MemorySessionStore, session_id: str, owner: str):
        self.store, self.session_id, self.owner = store, session_id, owner
        self.session: Session | None = None

    async def __aenter__(self) -> Session:
        # its span: the wait for the session's turn (a flag's check while tracing is off)
        span = self.store.spans.start("lease", self.session_id) if tracing.tracer else None
        try:
            session = self.store.get(self.session_id, self.owner)
            await session.lock.acquire()
            if not session.alive:  # deleted while this request waited its turn
                session.lock.release()
                raise unknown(self.session_id)
        except BaseException as e:
            if span is not None:
                tracing.failed(span, e)
            raise
        finally:
            if span is not None:
                span.end()
        self.session = session
        return session

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        session = self.session
        assert session is not None
        session.lock.release()
        if kind is None:
            self.store.touch(session)


def ended_with(session_id: str, key: str) -> Gone:
    return Gone(
        f"session {clip(session_id)} ended: its model version {key} was unloaded from this "
        "server. Start a new session"
    )


def unknown(session_id: str) -> UnknownSession:
    return UnknownSession(
        f"no session {clip(session_id)}: it never existed, was deleted or expired"
    )
