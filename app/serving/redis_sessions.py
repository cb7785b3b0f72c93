"""Sessions in Redis: every replica serves every session, and sessions outlive a restart.

Keys (under PREFIX, "hn" by default):
  PREFIX:s:{id}          hash: model, state (raw bytes), dtype, shape, tokens, last (JSON),
                         created, used, owner; Redis's own expiry is the TTL (PEXPIRE on
                         each use of the state: reading the record is not use)
  PREFIX:idx:{model}     sorted set: id -> last use (ms); the cap, the LRU victim, expiry
  PREFIX:own:{owner}     sorted set, all scores 0: the owner's ids, listed in order of id
                         (ZRANGEBYLEX pages); its size is the owner's share of the cap
  PREFIX:lru:{owner}     sorted set: the owner's ids -> last use (ms); with the `evict`
                         policy an owner that needs room evicts its own oldest, never another's
  PREFIX:owner           hash: id -> owner, so an expired session's owner index forgets it
  PREFIX:lock:{id}       the lease of the request working on the session: a random token,
                         expiring after SESSION_LEASE_SECONDS unless its holder renews it

An owner is an API key's id (a prefix of its sha256, never the key) or "-" (no keys).

Concurrency across replicas. A request leases a session with SET NX PX (a short lock) and
reads its state in the same Lua call; it writes the state back with a Lua call that first
checks that the lock still holds its own token. The token is a fencing token: a request that
stalled past the lock's expiry, while another took the session over, cannot overwrite the
newer state (its write is refused and the client gets a 503). A lease cannot outlive its
holder: the holder renews it every third of its time while it works and releases it on every
way out (cancellation included), so a lease left by a crashed replica or a killed Redis
expires within SESSION_LEASE_SECONDS; and a request waits for a lease another replica holds
at most SESSION_LEASE_WAIT_SECONDS (counted from its arrival), then gets 503 with
`Retry-After` (the lease's time left), never hangs. Why a lock and not optimistic
compare-and-set on a version: a streamed continuation sends its words before it writes the
state back, and a word sent cannot be taken back to retry. With the lock nothing is retried,
and requests to one session apply one at a time, in the order they get it. Within a replica
they first queue on an asyncio lock (FIFO), so Redis sees contention only across replicas.
While leased, the state is opened as a sequence of the model's engine like any other
session's, so a step still batches every session that is ready, whichever store it lives in.
The store keeps the state as the engine exports it (bytes and their layout), never a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from app.core import tracing
from app.core.errors import NotReady, StateMismatch
from app.core.redact import clip, redact_url
from app.core.security import ANONYMOUS
from app.engine.registry import LoadedModel, ModelRegistry
from app.serving import redis_scripts as lua
from app.serving.redis_records import RECORD_FIELDS, RedisLease, open_lease, parse_record
from app.serving.sessions import (
    Lease,
    Seed,
    SessionRecord,
    SessionStore,
    owner_full,
    server_full,
    unknown,
)

log = logging.getLogger("app.sessions")
T = TypeVar("T")


@dataclass
class _LocalQueue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class RedisSessionStore(SessionStore):
    in_process = False

    def __init__(
        self,
        url: str,
        registry: ModelRegistry,
        ttl_s: float,
        max_sessions: int,
        policy: str = "reject",
        prefix: str = "hn",
        lock_s: float = 5.0,
        wait_s: float = 2.0,
        max_per_owner: int | None = None,
    ):
        assert policy in ("reject", "evict"), f"unknown cap policy {policy!r}"
        self.url = redact_url(url)  # for messages: never the password
        self.registry = registry
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.policy = policy
        self.prefix = prefix
        self.keys = lua.Keys(prefix)
        self.lock_ms = int(lock_s * 1000)
        self.wait_s = wait_s
        self.max_per_owner = max_per_owner  # None: no per-owner share; never for ANONYMOUS
        # A pooled connection can be stale (Redis restarted, a proxy dropped it): the call
        # reconnects and is sent once more, at once; a second failure is a 503.
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[ConnectionError],
        )
        self._batch = lua.ScriptBatcher(self.redis)
        self._acquire = self._batch.register(lua.ACQUIRE)
        self._commit = self._batch.register(lua.COMMIT)
        self._release = self._batch.register(lua.RELEASE)
        self._renew = self._batch.register(lua.RENEW)
        self._create = self._batch.register(lua.CREATE)
        self._delete = self._batch.register(lua.DELETE)
        self._sweep = self._batch.register(lua.SWEEP)
        self._local: dict[str, _LocalQueue] = {}
        self._counts: dict[str, int] = {}
        where = self.redis.connection_pool.connection_kwargs
        self.spans = tracing.StoreSpans("redis", where.get("host"), where.get("port"))

    # -- plumbing ---------------------------------------------------------------------------
    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """A Redis call; Redis being unreachable becomes a 503 that says so."""
        try:
            return await fn()
        except RedisError as e:
            raise NotReady(
                f"the session store (Redis at {self.url}) is unreachable: {e}. "
                "Sessions are unavailable until it is back; retry shortly"
            ) from None

    async def check(self) -> None:
        await self._call(self.redis.ping)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- sessions --------------------------------------------------------------------------
    async def create(
        self,
        model: LoadedModel,
        owner: str = ANONYMOUS,
        seed: Seed | None = None,
        spare: str | None = None,
    ) -> SessionRecord:
        sid = secrets.token_urlsafe(16)
        now_ms = int(time.time() * 1000)
        if seed is not None:
            model.engine.open(seed.saved).close()  # LayoutMismatch before anything is written
        zero = seed.saved if seed is not None else model.engine.zero_export
        tokens, last = (seed.tokens_seen, list(seed.last_words)) if seed is not None else (0, [])
        indexes = [self.keys.index(model.name)] + [
            self.keys.index(n) for n in sorted(self.registry.models) if n != model.name
        ]
        with self.spans.op("create", sid):
            made = await self._call(
                lambda: self._batch.call(
                    self._create,
                    [
                        self.keys.session(sid),
                        self.keys.owned(owner),
                        self.keys.owners(),
                        self.keys.use_order(owner),
                        *indexes,
                    ],
                    [
                        sid,
                        model.name,
                        zero.data,
                        zero.dtype,
                        zero.shape,
                        now_ms,
                        int(self.ttl_s * 1000),
                        self.max_sessions,
                        int(self.policy == "evict"),
                        self.prefix,
                        owner,
                        self.max_per_owner if self.max_per_owner and owner != ANONYMOUS else 0,
                        model.version,
                        tokens,
                        json.dumps(last),
                        spare or "",
                    ],
                )
            )
        if made == -1:
            assert self.max_per_owner is not None
            raise owner_full(self.max_per_owner)
        if not made:
            raise server_full(self.max_sessions)
        self._counts[model.name] = self._counts.get(model.name, 0) + 1  # till the next sweep
        now = now_ms / 1000
        return SessionRecord(sid, model.name, model.version, tokens, last, now, now + self.ttl_s)

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str, owner: str = ANONYMOUS) -> AsyncIterator[Lease]:
        # from arrival: a queue behind a stale lease fails together, not one wait after another
        deadline = time.monotonic() + self.wait_s
        async with contextlib.AsyncExitStack() as held:
            with self.spans.op("lease", session_id):  # its turn, the lease, the state loaded
                await held.enter_async_context(self._queued(session_id))
                lease = await held.enter_async_context(self._leased(session_id, owner, deadline))
            yield lease

    @contextlib.asynccontextmanager
    async def _queued(self, session_id: str) -> AsyncIterator[None]:
        """This replica's requests to a session take turns, in arrival order."""
        local = self._local.setdefault(session_id, _LocalQueue())
        local.users += 1
        try:
            async with local.lock:
                yield
        finally:
            local.users -= 1
            if not local.users:
                del self._local[session_id]

    @contextlib.asynccontextmanager
    async def _leased(self, sid: str, owner: str, deadline: float) -> AsyncIterator[RedisLease]:
        token = secrets.token_hex(16)
        fields = await self._take(sid, token, owner, deadline)
        renewing = asyncio.ensure_future(self._keep(sid, token))
        try:
            lease = open_lease(self.registry, sid, owner, fields)
        except BaseException:
            renewing.cancel()
            await self._give_back(sid, token)
            raise
        written = False
        try:
            yield lease
            written = await self._write_back(lease, token)
        finally:
            renewing.cancel()
            try:
                if lease.dirty and not written:  # failed or cancelled after changing the
                    with contextlib.suppress(NotReady):  # state: keep what it holds now
                        written = await self._write_back(lease, token)
            finally:
                if not written:
                    await self._give_back(sid, token)
                lease.seq.close()

    async def _keep(self, sid: str, token: str) -> None:
        """Renew the lease every third of its time while its holder works; stop when it is
        no longer this holder's (the write back then says so) or Redis does not answer."""
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            try:
                held = await self._batch.call(
                    self._renew, [self.keys.lock(sid)], [token, self.lock_ms]
                )
            except RedisError:
                continue  # try again: the lease holds a while yet
            if not held:
                return

    async def _give_back(self, sid: str, token: str) -> None:
        """Release the lease, even when the request is being cancelled (shielded)."""
        with contextlib.suppress(NotReady, asyncio.CancelledError):
            await asyncio.shield(
                self._call(lambda: self._batch.call(self._release, [self.keys.lock(sid)], [token]))
            )

    async def _take(self, sid: str, token: str, owner: str, deadline: float) -> list[bytes]:
        """Lease the session in Redis, waiting while another replica holds it, until
        `deadline`: then 503 with Retry-After (the time the holder's lease has left)."""
        pause = 0.001
        while True:
            got = await self._call(
                lambda: self._batch.call(
                    self._acquire,
                    [self.keys.session(sid), self.keys.lock(sid)],
                    [token, self.lock_ms, owner],
                )
            )
            if got is None:
                raise unknown(sid)
            if not isinstance(got, int):
                return list(got)
            left_ms = -1 - got
            if time.monotonic() >= deadline:
                raise NotReady(
                    f"session {clip(sid)} is held by another request (or one that crashed, "
                    f"whose lease expires within {self.lock_ms / 1000:g} s): retry shortly",
                    retry_after=max(1, math.ceil(left_ms / 1000)),
                )
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)

    async def _write_back(self, lease: RedisLease, token: str) -> bool:
        with self.spans.op("commit", lease.id):
            return await self._commit_state(lease, token)

    async def _commit_state(self, lease: RedisLease, token: str) -> bool:
        exported = lease.seq.export()
        now_ms = int(time.time() * 1000)
        keys = [
            self.keys.session(lease.id),
            self.keys.lock(lease.id),
            self.keys.index(lease.model.name),
            self.keys.owned(lease.owner),
            self.keys.owners(),
            self.keys.use_order(lease.owner),
        ]
        args: list[Any] = [
            token,
            exported.data,
            lease.tokens_seen,
            json.dumps(lease.last_words),
            now_ms,
            int(self.ttl_s * 1000),
            lease.id,
            lease.owner,
        ]
        if lease.moved_from is not None:  # its model, version and layout change too
            keys.append(self.keys.index(lease.moved_from))
            args += [lease.model.name, lease.model.version, exported.dtype, exported.shape]
        done = await self._call(lambda: self._batch.call(self._commit, keys, args))
        if done == 0:
            raise self._lease_lost(lease.id)
        lease.used = now_ms / 1000
        return True  # written, or the session was deleted meanwhile: nothing left to keep

    def _lease_lost(self, sid: str) -> NotReady:
        return NotReady(
            f"session {clip(sid)}: this request held it longer than the lease "
            f"({self.lock_ms / 1000:g} s) and another took it over; its result was not kept"
        )

    def record(self, lease: Lease) -> SessionRecord:
        assert isinstance(lease, RedisLease)
        return SessionRecord.of(lease, lease.created, (lease.used or time.time()) + self.ttl_s)

    async def describe(self, session_id: str, owner: str = ANONYMOUS) -> SessionRecord:
        with self.spans.op("describe", session_id):
            got = await self._call(
                lambda: self.redis.hmget(self.keys.session(session_id), RECORD_FIELDS)
            )
        record = parse_record(session_id, got, owner, self.ttl_s)
        if record is None:
            raise unknown(session_id)
        return self._versioned(record)

    def _versioned(self, record: SessionRecord) -> SessionRecord:
        """A record written before versions were recorded is on its model's current one."""
        if record.version or record.model not in self.registry.entries:
            return record
        return dataclasses.replace(record, version=self.registry.entries[record.model].default)

    async def page(
        self, owner: str, limit: int, after: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        with self.spans.op("list"):
            return await self._page(owner, limit, after)

    async def _page(
        self, owner: str, limit: int, after: str | None
    ) -> tuple[list[SessionRecord], str | None]:
        owned, more = self.keys.owned(owner), True
        records: list[SessionRecord] = []
        while more and len(records) < limit:  # again if some were gone: a page is full
            need = limit - len(records)
            start = f"({after}" if after is not None else "-"
            got = await self._call(
                lambda s=start, n=need: self.redis.zrangebylex(owned, s, "+", 0, n + 1)  # type: ignore[misc]
            )
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in got]
            more, ids = len(ids) > need, ids[:need]
            if not ids:
                break

            async def fetch(ids: list[str] = ids) -> list[Any]:
                pipe = self.redis.pipeline(transaction=False)
                for sid in ids:
                    pipe.hmget(self.keys.session(sid), RECORD_FIELDS)
                return list(await pipe.execute())

            rows = await self._call(fetch)
            for sid, row in zip(ids, rows, strict=True):
                try:
                    record = parse_record(sid, row, owner, self.ttl_s)
                except StateMismatch:  # one damaged record does not hide the others
                    log.warning("session %s: its record in Redis is damaged", clip(sid))
                    continue
                if record is not None:
                    records.append(self._versioned(record))
            after = ids[-1]
        return records, after if more else None

    async def delete(self, session_id: str, owner: str = ANONYMOUS) -> None:
        """Takes its turn like a request (without loading the state, which may not even fit
        its model any more), then deletes."""
        with self.spans.op("delete", session_id):
            await self._delete_now(session_id, owner)

    async def _delete_now(self, session_id: str, owner: str) -> None:
        deadline = time.monotonic() + self.wait_s
        async with self._queued(session_id):
            token = secrets.token_hex(16)
            await self._take(session_id, token, owner, deadline)
            done = await self._call(
                lambda: self._batch.call(
                    self._delete,
                    [self.keys.session(session_id), self.keys.lock(session_id)],
                    [session_id, self.prefix, token],
                )
            )
        if done == 0:
            raise self._lease_lost(session_id)
        if done == -1:  # expired between the two calls
            raise unknown(session_id)
        name = done.decode()
        self._counts[name] = max(0, self._counts.get(name, 0) - 1)

    async def expire(self) -> int:
        """Redis expires the sessions themselves; here the indexes forget them, and the
        metrics' counts are refreshed."""
        before = int((time.time() - self.ttl_s) * 1000)
        dropped, counts = 0, {}
        for name in sorted(self.registry.models):
            index = self.keys.index(name)
            dropped += await self._call(
                lambda i=index: self._batch.call(self._sweep, [i], [before, self.prefix])  # type: ignore[misc]
            )
            counts[name] = await self._call(lambda i=index: self.redis.zcard(i))  # type: ignore[misc]
        self._counts = counts
        return dropped

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    async def holds(self, model: LoadedModel) -> bool:
        """Whether a session in Redis was made by `model`'s version: its model's index read,
        then the sessions' versions, a thousand at a time (records without one are on their
        model's current version, never a draining one)."""
        ids = await self._call(lambda: self.redis.zrange(self.keys.index(model.name), 0, -1))
        want = str(model.version).encode()
        for i in range(0, len(ids), 1000):

            async def versions(chunk: list[Any] = ids[i : i + 1000]) -> list[Any]:
                pipe = self.redis.pipeline(transaction=False)
                for sid in chunk:
                    sid = sid.decode() if isinstance(sid, bytes) else str(sid)
                    pipe.hget(self.keys.session(sid), "version")
                return list(await pipe.execute())

            if want in await self._call(versions):
                return True
        return False

    async def end_model(self, model: LoadedModel) -> int:
        """Nothing kept here: the sessions stay in Redis, and each late request on one is
        told (410) that its version was unloaded."""
        return 0
