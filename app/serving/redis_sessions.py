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
import hashlib
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
from redis.exceptions import ConnectionError, NoScriptError, RedisError

from app.core.errors import NotReady, StateMismatch
from app.core.redact import clip, redact_url
from app.core.security import ANONYMOUS
from app.engine.registry import LoadedModel, ModelRegistry
from app.engine.sequences import ExportedState, LayoutMismatch, Sequence
from app.serving.sessions import (
    LAST_WORDS,
    Lease,
    SessionRecord,
    SessionStore,
    owner_full,
    server_full,
    unknown,
)

log = logging.getLogger("app.sessions")
T = TypeVar("T")
RECORD_FIELDS = ["model", "tokens", "last", "created", "used", "owner"]

FORGET = """
-- the owner's index forgets a session that is gone (deleted, evicted or expired)
local function forget(prefix, id)
  local owner = redis.call('HGET', prefix .. ':owner', id)
  if owner then
    redis.call('ZREM', prefix .. ':own:' .. owner, id)
    redis.call('ZREM', prefix .. ':lru:' .. owner, id)
    redis.call('HDEL', prefix .. ':owner', id)
  end
end
-- forget the sessions of one model's index idle since `before` (Redis expired them itself)
local function sweep(prefix, index, before)
  local dead = redis.call('ZRANGEBYSCORE', index, '-inf', before)
  for _, id in ipairs(dead) do forget(prefix, id) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', before) end
  return #dead
end
"""

ACQUIRE = """
-- KEYS: session, lock; ARGV: token, lock_ms, owner
-- nil: no such session (or another owner's); a negative number: leased by another request,
-- for -1 - that many ms more
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
if (redis.call('HGET', KEYS[1], 'owner') or '-') ~= ARGV[3] then return nil end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return -1 - math.max(redis.call('PTTL', KEYS[2]), 0)
end
return redis.call('HGETALL', KEYS[1])
"""

COMMIT = """
-- KEYS: session, lock, index, owner's index, owner hash, owner's use order
-- ARGV: token, state, tokens, last, used_ms, ttl_ms, id, owner
-- 1: written; 0: the lease was lost (fencing); -1: the session was deleted meanwhile
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'tokens', ARGV[3], 'last', ARGV[4], 'used', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
redis.call('ZADD', KEYS[4], 0, ARGV[7])  -- back, had a sweep taken it while it was busy
redis.call('HSET', KEYS[5], ARGV[7], ARGV[8])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[7])
return 1
"""

RENEW = """
-- KEYS: lock; ARGV: token, lock_ms.  1: renewed; 0: the lease is no longer this token's
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CREATE = (
    FORGET
    + """
-- KEYS: session, owner's index, owner hash, owner's use order, then the index of every
-- model (the new session's first)
-- ARGV: id, model, state, dtype, shape, now_ms, ttl_ms, max_sessions, evict (0/1), prefix,
--       owner, max_per_owner (0: no share)
-- 1: made; 0: the server is full; -1: the owner's share is full. With evict, room is made
-- by evicting the owner's own least recently used session; one that holds none gets 0.
local now, ttl, prefix = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[10]
local live = 0
for i = 5, #KEYS do
  sweep(prefix, KEYS[i], now - ttl)
  live = live + redis.call('ZCARD', KEYS[i])
end
local function evict_own()
  if ARGV[9] == '0' then return false end
  local first = redis.call('ZRANGE', KEYS[4], 0, 0)
  local victim = first[1]
  if victim == nil then return false end
  redis.call('DEL', prefix .. ':s:' .. victim)
  for i = 5, #KEYS do redis.call('ZREM', KEYS[i], victim) end
  forget(prefix, victim)
  redis.call('ZREM', KEYS[4], victim)
  return true
end
local share = tonumber(ARGV[12])
if share > 0 and redis.call('ZCARD', KEYS[2]) >= share then
  if not evict_own() then return -1 end
  live = live - 1
end
if live >= tonumber(ARGV[8]) and not evict_own() then return 0 end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'state', ARGV[3], 'dtype', ARGV[4],
           'shape', ARGV[5], 'tokens', 0, 'last', '[]', 'created', ARGV[6], 'used', ARGV[6],
           'owner', ARGV[11])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[11])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
return 1
"""
)

DELETE = (
    FORGET
    + """
-- KEYS: session, lock; ARGV: id, prefix, token (the deleting request's lease)
-- the session's model; 0: the lease was lost; -1: the session is gone already
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[2])
local model = redis.call('HGET', KEYS[1], 'model')
redis.call('DEL', KEYS[1])
forget(ARGV[2], ARGV[1])
if not model then return -1 end
redis.call('ZREM', ARGV[2] .. ':idx:' .. model, ARGV[1])
return model
"""
)

SWEEP = (
    FORGET
    + """
-- KEYS: a model's index; ARGV: before_ms, prefix.  How many sessions it forgot
return sweep(ARGV[2], KEYS[1], ARGV[1])
"""
)


class ScriptBatcher:
    """Runs the Lua calls that requests make in the same event-loop turn together, in one
    pipeline: one round trip and one reply parse for all of them. Under load this is what
    keeps Redis from costing more than the model (the engine batches forwards the same way).
    Scripts are called by their sha1 (EVALSHA) and loaded again only if Redis forgot them
    (a restart): redis-py's own pipelined scripts would ask SCRIPT EXISTS on every batch.
    """

    def __init__(self, redis: aioredis.Redis):
        self.redis = redis
        self._pending: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._sources: dict[str, str] = {}

    def register(self, source: str) -> str:
        """The sha1 by which `source` is called."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._sources[sha] = source
        return sha

    async def call(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((sha, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _run(self, batch: list[tuple[str, list[str], list[Any], Any]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for sha, keys, args, _ in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _flush(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        try:
            results = await self._run(batch)
            if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted
                for source in self._sources.values():
                    await self.redis.script_load(source)
                results = await self._run(batch)
        except Exception as e:  # every caller hears of it; none is left waiting
            for *_, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


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

    def saw(self, words: list[str]) -> None:
        self.tokens_seen += len(words)
        self.last_words = (self.last_words + words)[-LAST_WORDS:]
        self.dirty = True

    def reset(self) -> None:
        self.seq.reset()
        self.tokens_seen, self.last_words, self.dirty = 0, [], True


@dataclass
class _LocalQueue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class RedisSessionStore(SessionStore):
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
        self._batch = ScriptBatcher(self.redis)
        self._acquire = self._batch.register(ACQUIRE)
        self._commit = self._batch.register(COMMIT)
        self._release = self._batch.register(RELEASE)
        self._renew = self._batch.register(RENEW)
        self._create = self._batch.register(CREATE)
        self._delete = self._batch.register(DELETE)
        self._sweep = self._batch.register(SWEEP)
        self._local: dict[str, _LocalQueue] = {}
        self._counts: dict[str, int] = {}

    # -- keys and plumbing -------------------------------------------------------------------
    def _key(self, sid: str) -> str:
        return f"{self.prefix}:s:{sid}"

    def _lock_key(self, sid: str) -> str:
        return f"{self.prefix}:lock:{sid}"

    def _index(self, model: str) -> str:
        return f"{self.prefix}:idx:{model}"

    def _owned(self, owner: str) -> str:
        return f"{self.prefix}:own:{owner}"

    def _use_order(self, owner: str) -> str:
        return f"{self.prefix}:lru:{owner}"

    def _owners(self) -> str:
        return f"{self.prefix}:owner"

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
    async def create(self, model: LoadedModel, owner: str = ANONYMOUS) -> SessionRecord:
        sid = secrets.token_urlsafe(16)
        now_ms = int(time.time() * 1000)
        zero = model.engine.zero_export
        indexes = [self._index(model.name)] + [
            self._index(n) for n in sorted(self.registry.models) if n != model.name
        ]
        made = await self._call(
            lambda: self._batch.call(
                self._create,
                [
                    self._key(sid),
                    self._owned(owner),
                    self._owners(),
                    self._use_order(owner),
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
        return SessionRecord(sid, model.name, 0, [], now, now + self.ttl_s)

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str, owner: str = ANONYMOUS) -> AsyncIterator[Lease]:
        deadline = time.monotonic() + self.wait_s  # from arrival: a queue behind a stale
        async with (  # lease fails together, not one wait after another
            self._queued(session_id),
            self._leased(session_id, owner, deadline) as lease,
        ):
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
            lease = self._load(sid, owner, fields)
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
                    self._renew, [self._lock_key(sid)], [token, self.lock_ms]
                )
            except RedisError:
                continue  # try again: the lease holds a while yet
            if not held:
                return

    async def _give_back(self, sid: str, token: str) -> None:
        """Release the lease, even when the request is being cancelled (shielded)."""
        with contextlib.suppress(NotReady, asyncio.CancelledError):
            await asyncio.shield(
                self._call(lambda: self._batch.call(self._release, [self._lock_key(sid)], [token]))
            )

    async def _take(self, sid: str, token: str, owner: str, deadline: float) -> list[bytes]:
        """Lease the session in Redis, waiting while another replica holds it, until
        `deadline`: then 503 with Retry-After (the time the holder's lease has left)."""
        pause = 0.001
        while True:
            got = await self._call(
                lambda: self._batch.call(
                    self._acquire,
                    [self._key(sid), self._lock_key(sid)],
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

    def _load(self, sid: str, owner: str, raw: list[bytes]) -> RedisLease:
        try:
            fields = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
            name = fields["model"].decode()
            saved = ExportedState(
                fields["dtype"].decode(), fields["shape"].decode(), fields["state"]
            )
            tokens, last, created = (
                int(fields["tokens"]),
                words(fields["last"]),
                int(fields["created"]),
            )
            used = int(fields["used"]) / 1000
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
            raise damaged(sid) from None
        model = self.registry.models.get(name)
        if model is None:
            raise StateMismatch(
                f"session {clip(sid)} belongs to model {name!r}, which this server has not loaded"
            )
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

    async def _write_back(self, lease: RedisLease, token: str) -> bool:
        state = lease.seq.export().data
        now_ms = int(time.time() * 1000)
        done = await self._call(
            lambda: self._batch.call(
                self._commit,
                [
                    self._key(lease.id),
                    self._lock_key(lease.id),
                    self._index(lease.model.name),
                    self._owned(lease.owner),
                    self._owners(),
                    self._use_order(lease.owner),
                ],
                [
                    token,
                    state,
                    lease.tokens_seen,
                    json.dumps(lease.last_words),
                    now_ms,
                    int(self.ttl_s * 1000),
                    lease.id,
                    lease.owner,
                ],
            )
        )
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
        got = await self._call(lambda: self.redis.hmget(self._key(session_id), RECORD_FIELDS))
        record = self._record(session_id, got, owner)
        if record is None:
            raise unknown(session_id)
        return record

    def _record(self, sid: str, got: list[Any], owner: str) -> SessionRecord | None:
        """The record of a session's fields (RECORD_FIELDS); None if gone or not the owner's;
        StateMismatch (409) if the record is damaged."""
        if got[0] is None or (got[5] or b"-").decode() != owner:
            return None
        model, tokens, last, created, used, _ = got
        try:
            return SessionRecord(
                sid,
                model.decode(),
                int(tokens),
                words(last),
                int(created) / 1000,
                int(used) / 1000 + self.ttl_s,
            )
        except (ValueError, TypeError, AttributeError, RecursionError):
            raise damaged(sid) from None

    async def page(
        self, owner: str, limit: int, after: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        owned, more = self._owned(owner), True
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
                    pipe.hmget(self._key(sid), RECORD_FIELDS)
                return list(await pipe.execute())

            rows = await self._call(fetch)
            for sid, row in zip(ids, rows, strict=True):
                try:
                    record = self._record(sid, row, owner)
                except StateMismatch:  # one damaged record does not hide the others
                    log.warning("session %s: its record in Redis is damaged", clip(sid))
                    continue
                if record is not None:
                    records.append(record)
            after = ids[-1]
        return records, after if more else None

    async def delete(self, session_id: str, owner: str = ANONYMOUS) -> None:
        """Takes its turn like a request (without loading the state, which may not even fit
        its model any more), then deletes."""
        deadline = time.monotonic() + self.wait_s
        async with self._queued(session_id):
            token = secrets.token_hex(16)
            await self._take(session_id, token, owner, deadline)
            done = await self._call(
                lambda: self._batch.call(
                    self._delete,
                    [self._key(session_id), self._lock_key(session_id)],
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
            index = self._index(name)
            dropped += await self._call(
                lambda i=index: self._batch.call(self._sweep, [i], [before, self.prefix])  # type: ignore[misc]
            )
            counts[name] = await self._call(lambda i=index: self.redis.zcard(i))  # type: ignore[misc]
        self._counts = counts
        return dropped

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


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
