"""The Redis session store's Lua calls, the batcher that pipelines them, and its keys."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

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
-- KEYS: session, lock, index, owner's index, owner hash, owner's use order[, the index of
--       the model it moved from]
-- ARGV: token, state, tokens, last, used_ms, ttl_ms, id, owner[, model, version, dtype,
--       shape: a session moved to another model or version]
-- 1: written; 0: the lease was lost (fencing); -1: the session was deleted meanwhile
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'tokens', ARGV[3], 'last', ARGV[4], 'used', ARGV[5])
if ARGV[9] then
  redis.call('HSET', KEYS[1], 'model', ARGV[9], 'version', ARGV[10], 'dtype', ARGV[11],
             'shape', ARGV[12])
  if KEYS[7] ~= KEYS[3] then redis.call('ZREM', KEYS[7], ARGV[7]) end
end
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
--       owner, max_per_owner (0: no share), version, tokens, last (JSON), spare ('' none)
-- 1: made; 0: the server is full; -1: the owner's share is full. With evict, room is made
-- by evicting the owner's own least recently used session other than `spare` (a fork's
-- source, leased by the forking request); one that holds none gets 0.
local now, ttl, prefix = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[10]
local live = 0
for i = 5, #KEYS do
  sweep(prefix, KEYS[i], now - ttl)
  live = live + redis.call('ZCARD', KEYS[i])
end
local function evict_own()
  if ARGV[9] == '0' then return false end
  local first = redis.call('ZRANGE', KEYS[4], 0, 1)
  local victim = first[1]
  if victim ~= nil and victim == ARGV[16] then victim = first[2] end
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
           'shape', ARGV[5], 'tokens', ARGV[14], 'last', ARGV[15], 'created', ARGV[6],
           'used', ARGV[6], 'owner', ARGV[11], 'version', ARGV[13])
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


class Keys:
    """The store's Redis keys, under its prefix (see app.serving.redis_sessions)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def session(self, sid: str) -> str:
        return f"{self.prefix}:s:{sid}"

    def lock(self, sid: str) -> str:
        return f"{self.prefix}:lock:{sid}"

    def index(self, model: str) -> str:
        return f"{self.prefix}:idx:{model}"

    def owned(self, owner: str) -> str:
        return f"{self.prefix}:own:{owner}"

    def use_order(self, owner: str) -> str:
        return f"{self.prefix}:lru:{owner}"

    def owners(self) -> str:
        return f"{self.prefix}:owner"
