"""Per-key rate limits on /v1: requests a second and tokens a second, each a token bucket.

A caller is its API key's owner id, or with keys off its client address (every caller is then
the one anonymous owner). A bucket holds at most `burst` and refills at `rate` a second; a
request takes 1 from the requests bucket and its estimated token cost from the tokens bucket,
both or neither. It is let in when each bucket holds its cost (or, for a cost larger than the
bucket, when the bucket is full): the tokens bucket may then go below zero, so a large request
makes its caller wait its cost's worth afterwards and the long-run rate holds. A refusal is a
429 naming the limit, with `Retry-After` and the IETF draft's `RateLimit-Limit`,
`RateLimit-Remaining` and `RateLimit-Reset` (of the limit nearest exhaustion); answers that
pass carry the `RateLimit-*` headers too. A request without a valid key is not charged: the
route answers its 401.

With SESSION_BACKEND=redis the buckets live in Redis (one hash per caller, expiring once it
would be full again) and one Lua script refills and takes atomically, on Redis's clock, so
every replica shares them. Redis unreachable: requests are served unlimited (fail open) and
a warning is logged, at most once a minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.edge import read_body, replay
from app.api.errors import error_response, is_openai, send_response
from app.api.routes import API_PREFIX, OPENAI_PATHS
from app.core.config import Settings
from app.core.redact import redact_url
from app.core.security import ANONYMOUS, ApiKeys, Unauthorized
from model_store.vocab import split_words

log = logging.getLogger("app.ratelimit")
MAX_BUCKETS = 100_000  # callers tracked in memory at once; the least recently seen go first
WARN_EVERY_S = 60.0
SKIP_S = 1.0  # after a failure, requests go unlimited this long before Redis is tried again
DEFAULT_MAX_WORDS, DEFAULT_MAX_TOKENS = 20, 16  # the schemas' defaults
RATE_LIMIT_HEADERS = ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]


@dataclass(frozen=True)
class Limit:
    name: str  # "requests" or "tokens"
    setting: str
    rate: float  # refill a second
    burst: float  # the bucket's size


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    levels: tuple[float, ...]  # each bucket after taking (as it was, when refused)
    waits: tuple[float, ...]  # seconds until each bucket holds this request's cost


class Buckets(Protocol):
    async def take(self, who: str, costs: tuple[float, ...]) -> Verdict: ...
    async def close(self) -> None: ...


def _need(cost: float, limit: Limit) -> float:
    return min(cost, limit.burst)  # a cost larger than the bucket passes when it is full


class MemoryBuckets:
    """This process's buckets: caller -> (levels, when), the least recently used evicted."""

    def __init__(
        self,
        limits: tuple[Limit, ...],
        cap: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits
        self.cap = cap
        self.clock = clock
        self._buckets: dict[str, tuple[tuple[float, ...], float]] = {}

    async def take(self, who: str, costs: tuple[float, ...]) -> Verdict:
        now = self.clock()
        found = self._buckets.pop(who, None)  # put back last: dict order is LRU order
        if found is None:
            levels = tuple(lim.burst for lim in self.limits)
        else:
            old, at = found
            levels = tuple(
                min(lim.burst, lv + (now - at) * lim.rate)
                for lim, lv in zip(self.limits, old, strict=True)
            )
        waits = tuple(
            max(0.0, (_need(c, lim) - lv) / lim.rate)
            for lim, lv, c in zip(self.limits, levels, costs, strict=True)
        )
        allowed = not any(waits)
        if allowed:
            levels = tuple(lv - c for lv, c in zip(levels, costs, strict=True))
        self._buckets[who] = (levels, now)
        while len(self._buckets) > self.cap:
            del self._buckets[next(iter(self._buckets))]
        return Verdict(allowed, levels, waits)

    async def close(self) -> None:
        self._buckets.clear()


TAKE = """
-- KEYS: the caller's bucket (hash: level1, level2, at_ms)
-- ARGV: rate, burst, cost of each limit in turn
-- returns: allowed (1/0), then each limit's level (x1000) and wait (ms), as integers
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
local n = #ARGV / 3
local levels, waits, allowed, full_ms = {}, {}, 1, 0
for i = 1, n do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local level = tonumber(redis.call('HGET', KEYS[1], 'l' .. i) or burst)
  level = math.min(burst, level + math.max(0, now - at) * rate / 1000)
  local need = math.min(cost, burst)
  waits[i] = 0
  if level < need then waits[i] = (need - level) / rate * 1000; allowed = 0 end
  levels[i] = level
end
local out = {allowed}
for i = 1, n do
  if allowed == 1 then
    local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
    levels[i] = levels[i] - cost
    redis.call('HSET', KEYS[1], 'l' .. i, tostring(levels[i]))
    full_ms = math.max(full_ms, (burst - levels[i]) / rate * 1000)
  end
  table.insert(out, math.floor(levels[i] * 1000))
  table.insert(out, math.ceil(waits[i]))
end
if allowed == 1 then
  redis.call('HSET', KEYS[1], 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(full_ms) + 1000)  -- full again: forget it
end
return out
"""


class RedisBuckets:
    """The buckets in Redis, shared by every replica on the same REDIS_URL and REDIS_PREFIX."""

    def __init__(self, url: str, prefix: str, limits: tuple[Limit, ...]):
        self.url = redact_url(url)
        self.prefix = prefix
        self.limits = limits
        # one try, briefly: a request waits on Redis at most a second before it is served
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        self._take = self.redis.register_script(TAKE)  # EVALSHA, loaded again if forgotten

    async def take(self, who: str, costs: tuple[float, ...]) -> Verdict:
        args: list[float] = []
        for lim, cost in zip(self.limits, costs, strict=True):
            args += [lim.rate, lim.burst, cost]
        got = await self._take(keys=[f"{self.prefix}:rl:{who}"], args=[repr(a) for a in args])
        out = [int(x) for x in got]
        return Verdict(
            bool(out[0]), tuple(x / 1000 for x in out[1::2]), tuple(x / 1000 for x in out[2::2])
        )

    async def close(self) -> None:
        await self.redis.aclose()


class RateLimiter:
    def __init__(self, limits: tuple[Limit, ...], buckets: Buckets, max_cost: int):
        self.limits = limits
        self.buckets = buckets
        self.max_cost = max_cost  # a larger request gets 400 anyway (MAX_REQUEST_TOKENS)
        self.counts_tokens = any(lim.name == "tokens" for lim in limits)
        self._warned = -math.inf
        self._skip_until = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter the settings ask for; None when both limits are off (the default)."""
        limits = []
        for name, setting, rate, burst in (
            ("requests", "RATE_LIMIT_RPS", settings.RATE_LIMIT_RPS, settings.RATE_LIMIT_BURST),
            (
                "tokens",
                "RATE_LIMIT_TOKENS_PER_SECOND",
                settings.RATE_LIMIT_TOKENS_PER_SECOND,
                settings.RATE_LIMIT_TOKEN_BURST,
            ),
        ):
            if rate:
                limits.append(Limit(name, setting, rate, burst or max(1.0, 2 * rate)))
        if not limits:
            return None
        buckets: Buckets
        if settings.SESSION_BACKEND == "redis":
            buckets = RedisBuckets(settings.REDIS_URL, settings.REDIS_PREFIX, tuple(limits))
        else:
            buckets = MemoryBuckets(tuple(limits))
        return cls(tuple(limits), buckets, settings.MAX_REQUEST_TOKENS)

    async def take(self, who: str, tokens: int) -> Verdict | None:
        """The verdict on one request of `tokens` estimated tokens; None if the buckets are
        out of reach (then the request is served: fail open)."""
        costs = tuple(1.0 if lim.name == "requests" else float(tokens) for lim in self.limits)
        if time.monotonic() < self._skip_until:
            return None
        try:
            return await self.buckets.take(who, costs)
        except Exception as e:  # Redis down or slow: serve rather than refuse everyone
            now = time.monotonic()
            self._skip_until = now + SKIP_S
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                url = getattr(self.buckets, "url", "")
                log.warning("rate limits not applied: their store %s failed: %r", url, e)
            return None

    def headers(self, verdict: Verdict) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The limit that answers for the verdict (the one that refused, else the one nearest
        exhaustion) and the RateLimit-* headers (Retry-After too, on a refusal)."""
        pairs = list(enumerate(self.limits))
        if verdict.allowed:
            i = min(pairs, key=lambda p: verdict.levels[p[0]] / p[1].burst)[0]
        else:
            i = max(pairs, key=lambda p: verdict.waits[p[0]])[0]
        lim, level = self.limits[i], verdict.levels[i]
        headers = [
            (b"ratelimit-limit", b"%d" % math.floor(lim.burst)),
            (b"ratelimit-remaining", b"%d" % max(0, math.floor(level))),
            (b"ratelimit-reset", b"%d" % math.ceil(max(0.0, lim.burst - level) / lim.rate)),
        ]
        if not verdict.allowed:
            headers.append((b"retry-after", b"%d" % max(1, math.ceil(verdict.waits[i]))))
        return i, headers

    async def close(self) -> None:
        await self.buckets.close()


def _count(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


def _words(text: object) -> int:
    return len(split_words(text)) if isinstance(text, str) else 0


def token_cost(path: str, body: bytes) -> int:
    """Tokens a /v1 request will feed and generate, estimated from its body before it runs:
    the words of `text`, plus `max_words` on a continuation; on /v1/completions,
    max(n, best_of) x (the prompts' tokens + prompts x max_tokens). 0 for anything else
    (and for a body that is not JSON: FastAPI refuses it)."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(data, dict):
        return 0
    if path not in OPENAI_PATHS:
        words = _words(data.get("text"))
        if path.endswith("/continuation"):
            words += _count(data.get("max_words"), DEFAULT_MAX_WORDS)
        return words
    prompt = data.get("prompt")
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and not isinstance(prompt[0], (str, list))
    ):
        prompts: list[object] = [prompt]
    elif isinstance(prompt, list):
        prompts = prompt
    else:
        return 0
    fed = sum(
        _words(p) if isinstance(p, str) else len(p) if isinstance(p, list) else 0 for p in prompts
    )
    per_prompt = max(_count(data.get("n"), 1), _count(data.get("best_of"), 1))
    return per_prompt * (fed + len(prompts) * _count(data.get("max_tokens"), DEFAULT_MAX_TOKENS))


def refusal(
    path: str, limit: Limit, who: str, tokens: int, headers: list[tuple[bytes, bytes]]
) -> Response:
    caller = "this API key" if who.startswith("key:") else "this client address"
    if limit.name == "requests":
        what = f"{limit.rate:g} requests a second (bursts of {limit.burst:g})"
    else:
        what = (
            f"{limit.rate:g} tokens a second (bursts of {limit.burst:g}; this request's "
            f"estimate is {tokens:,})"
        )
    message = f"rate limit exceeded: {caller} may make {what} ({limit.setting}); retry later"
    openai = is_openai(path)
    return error_response(
        429,
        message,
        openai=openai,
        code="rate_limit_exceeded" if openai else None,
        headers={name.decode(): value.decode() for name, value in headers},
    )


class RateLimits:
    """ASGI middleware: the limits on every /v1 request, before the fast path and FastAPI.
    The limiter is built by the app's lifespan (app.state.rate_limiter; None: limits off)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter: RateLimiter | None = getattr(self.fastapi_app.state, "rate_limiter", None)
        path: str = scope.get("path", "")
        if limiter is None or scope["type"] != "http" or not path.startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        keys: ApiKeys = self.fastapi_app.state.keys
        try:
            owner = keys.owner(headers.get(b"authorization"))
        except Unauthorized:  # not charged: the route answers the 401
            await self.app(scope, receive, send)
            return
        if owner == ANONYMOUS:  # keys off: one bucket per client address
            client = scope.get("client")
            who = f"ip:{client[0] if client else '-'}"
        else:
            who = f"key:{owner}"
        tokens = 0
        has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
        if limiter.counts_tokens and scope["method"] == "POST" and has_body:
            body = await read_body(receive)
            receive = replay(body, receive)
            tokens = min(token_cost(path, body), limiter.max_cost)
        verdict = await limiter.take(who, tokens)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        i, extra = limiter.headers(verdict)
        if not verdict.allowed:
            await send_response(send, refusal(path, limiter.limits[i], who, tokens, extra))
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
