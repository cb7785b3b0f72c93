"""Model versions at run time: load, promote, split, roll back and unload (the admin API),
the store's poller, and the fleet's state that every replica applies.

Every change goes through `ModelAdmin`, one at a time. With Redis (SESSION_BACKEND=redis)
the resulting state (each model's loaded versions, default, previous default and split) is
written under PREFIX:models:state and published on PREFIX:models; every replica applies the
state it reads, at start, on each message and every FLEET_CHECK_S (a message missed while
Redis was away is caught up then). Applying is idempotent: a replica loads what it lacks
(load first, swap after), sets the same defaults and splits, and unloads (drains) what the
state no longer names. `/ready` is 503 while a replica does not serve the fleet's state.
Two changes made at once on two replicas: the last one written wins, everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.errors import Conflict, NotReady, UnknownModel
from app.core.redact import clip, redact_url
from app.engine.registry import BadSplit, LoadedModel, ModelEntry, ModelRegistry
from app.serving.sessions import SessionStore
from model_store import list_checkpoints, read_meta

log = logging.getLogger("app.admin")

FLEET_CHECK_S = 5.0  # a replica re-reads the fleet's state this often besides the messages


class ModelAdmin:
    def __init__(self, registry: ModelRegistry, sessions: SessionStore, settings: Settings):
        self.registry = registry
        self.sessions = sessions
        self.settings = settings
        self.fleet: Fleet | None = None
        self.problem: str | None = None  # what this replica lacks of the fleet's state
        self._failed: dict[tuple[str, int], float] = {}  # polling: versions that failed, mtime
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # the fleet state's generation this replica serves (Redis's clock at its writing, in
        # microseconds): an older one read late never undoes a newer change
        self.generation = 0
        self._looked: dict[str, float] = {}  # a draining version's Redis sessions: when

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.SESSION_BACKEND == "redis":
            self.fleet = Fleet(self.settings.REDIS_URL, self.settings.REDIS_PREFIX)
            try:  # before the first request: a replica serves the fleet's state from the start
                raw = await self.fleet.redis.get(self.fleet.key)
                if raw is not None:
                    await self.apply(orjson.loads(raw))
            except (RedisError, OSError) as e:  # /ready says so: the sessions' Redis
                log.error("the fleet's state (Redis at %s) is out of reach: %s", self.fleet.url, e)
            self._tasks.append(asyncio.create_task(self._follow(), name="fleet-state"))
        if self.settings.MODEL_STORE_POLL_SECONDS:
            self._tasks.append(asyncio.create_task(self._poll(), name="store-poller"))

    async def stop(self) -> None:
        self._stopping = True
        # redis-py's pubsub read may swallow a cancellation: cancel until the task ends (its
        # loop checks _stopping too), and close the connections under it
        deadline = time.monotonic() + 5
        pending = [t for t in self._tasks if not t.done()]
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, still = await asyncio.wait(pending, timeout=0.1)
            pending = list(still)
        if pending:
            log.warning("%d admin tasks did not stop", len(pending))
        if self.fleet is not None:
            await self.fleet.close()

    # -- the state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        reg = self.registry
        return {"default": reg.default, "models": {n: e.state() for n, e in reg.entries.items()}}

    async def _changed(self) -> None:
        """Tell the fleet (with Redis) what this change left."""
        if self.fleet is not None:
            self.generation = await self.fleet.publish(self.state())

    # -- changes (the admin API) -------------------------------------------------------------
    async def load(self, name: str, version: int | None) -> ModelEntry:
        async with self.registry.busy:
            await self.registry.add_version(name, version)
            await self._changed()
        return self.registry.entry(name)

    async def promote(self, name: str, version: int, force: bool) -> ModelEntry:
        async with self.registry.busy:
            entry = self.registry.promote(name, version, force)
            await self._changed()
        return entry

    async def rollback(self, name: str) -> ModelEntry:
        async with self.registry.busy:
            entry = self.registry.rollback(name)
            await self._changed()
        return entry

    async def split(self, name: str, shares: dict[str, int] | None) -> ModelEntry:
        parsed: dict[int, int] | None = None
        if shares is not None:
            try:
                parsed = {int(v): s for v, s in shares.items()}
            except ValueError:
                raise BadSplit(
                    f'split keys are versions (whole numbers), as in {{"1": 90, "2": 10}}; '
                    f"got {', '.join(clip(k) for k in sorted(shares)[:3])}"
                ) from None
        async with self.registry.busy:
            entry = self.registry.set_split(name, parsed)
            await self._changed()
        return entry

    async def unload(self, name: str, version: int, grace_s: float | None) -> ModelEntry:
        grace = self.settings.UNLOAD_GRACE_SECONDS if grace_s is None else grace_s
        async with self.registry.busy:
            self.registry.unload(name, version, grace, self._end, self._waits)
            await self._changed()
        return self.registry.entry(name)

    async def _waits(self, lm: LoadedModel) -> bool:
        """A draining version still has work to serve: open sequences (stateless requests,
        leases, memory sessions) or, with Redis, sessions there made by it (looked up once a
        second)."""
        if lm.engine.open_sequences:
            return True
        if self.sessions.in_process:
            return False
        now = time.monotonic()
        if now - self._looked.get(lm.key, 0.0) < 1.0:
            return True
        self._looked[lm.key] = now
        try:
            return await self.sessions.holds(lm)
        except NotReady:  # Redis away: its sessions may come back
            return True

    async def _end(self, lm: LoadedModel) -> None:
        ended = await self.sessions.end_model(lm)
        if ended:
            log.info("%s: %d sessions ended with it", lm.key, ended)

    # -- the fleet ---------------------------------------------------------------------------
    async def apply(self, state: dict[str, Any]) -> None:
        """Make this replica serve `state` (the fleet's): load what it lacks, set defaults and
        splits, drain what it no longer names. What fails is said by /ready."""
        problems: list[str] = []
        async with self.registry.busy:
            generation = int(state.get("generation", 0))
            if generation <= self.generation:  # this replica's own, or older than what it has
                return
            self.generation = generation
            explained: set[str] = set()  # names whose problem is said already
            for name, want in sorted(state.get("models", {}).items()):
                try:
                    self._apply_one(name, want)
                    for version in map(int, want["versions"]):
                        entry = self.registry.entries.get(name)
                        if entry is not None and version in entry.versions:
                            continue
                        try:
                            await self.registry.add_version(name, version)
                        except UnknownModel:
                            problems.append(f"{name}@{version}: not in this replica's store")
                            explained.add(name)
                        except Conflict as e:
                            problems.append(e.detail)
                            explained.add(name)
                    self._apply_one(name, want)
                except (KeyError, TypeError, ValueError) as e:
                    problems.append(f"{name}: the fleet's state cannot be read ({e!r})")
                    explained.add(name)
            if state.get("default") in self.registry.entries:
                self.registry.default = state["default"]
            problems += [why for name, why in self._lacks(state) if name not in explained]
        self.problem = "; ".join(problems) or None
        if self.problem:
            log.error("the fleet's state is not served here: %s", self.problem)

    def _lacks(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        """What of `state` this replica does not serve: (name, why) pairs."""
        lacks = []
        for name, want in sorted(state.get("models", {}).items()):
            entry = self.registry.entries.get(name)
            ready = entry.ready() if entry is not None else set()
            missing = sorted({int(v) for v in want.get("versions", [])} - ready)
            if missing:
                lacks.append((name, f"{name}: versions {missing} not loaded"))
            elif entry is not None and entry.default != int(want.get("default", entry.default)):
                lacks.append(
                    (name, f"{name}: default is {entry.default}, the fleet's {want['default']}")
                )
        return lacks

    def _apply_one(self, name: str, want: dict[str, Any]) -> None:
        entry = self.registry.entries.get(name)
        if entry is None:
            return
        default, versions = int(want["default"]), [int(v) for v in want["versions"]]
        ready = entry.ready()
        if default in ready:
            entry.default = default
            previous = want.get("previous")
            entry.previous = int(previous) if previous is not None else None
            split = want.get("split")
            want_split = None if split is None else {int(v): int(s) for v, s in split.items()}
            if want_split is None or set(want_split) <= ready:
                entry.split = want_split
        for version, lm in list(entry.versions.items()):
            kept = version in versions or version == entry.default or lm.status != "ready"
            if not kept and not (entry.split is not None and entry.split.get(version)):
                self.registry.unload(
                    name, version, self.settings.UNLOAD_GRACE_SECONDS, self._end, self._waits
                )

    async def _follow(self) -> None:
        """Apply the fleet's state: at start, on every message, and every FLEET_CHECK_S."""
        assert self.fleet is not None
        while not self._stopping:
            try:
                async for raw in self.fleet.states(FLEET_CHECK_S):
                    if self._stopping:
                        return
                    if raw is not None:  # applied if newer than what this replica has
                        await self.apply(orjson.loads(raw))
                    elif raw is None:
                        # no state yet (or Redis came back empty): this replica's is the
                        # fleet's, unless another replica wrote one first
                        async with self.registry.busy:
                            made = await self.fleet.publish(self.state(), only_if_none=True)
                            self.generation = max(self.generation, made)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:  # /ready says so: the sessions' Redis
                log.warning("fleet state (Redis at %s) out of reach: %s", self.fleet.url, e)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("applying the fleet's state failed")
                await asyncio.sleep(1.0)

    # -- the store's poller ------------------------------------------------------------------
    async def _poll(self) -> None:
        period = self.settings.MODEL_STORE_POLL_SECONDS
        assert period is not None
        while True:
            await asyncio.sleep(period)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling the store failed")

    async def poll_once(self) -> list[str]:
        """Load each model's newest complete version in the store when it is newer than
        every version loaded (and, with policy `latest`, promote it); NAME@VERSION of those
        loaded. The store writes a version under a temporary name and renames it, so a
        listed version is complete; one that fails to load is tried again only once its
        folder changes."""
        refs = await asyncio.to_thread(list_checkpoints, self.registry.store)
        loaded = []
        for ref in refs:
            entry = self.registry.entries.get(ref.name)
            newest = max(entry.versions) if entry is not None else 0
            if ref.version <= newest or f"{ref.name}@{ref.version}" in self.registry.retired:
                continue
            try:
                stamp = ref.path.stat().st_mtime
            except OSError:
                continue
            if self._failed.get((ref.name, ref.version)) == stamp:
                continue
            try:
                await self.load(ref.name, ref.version)
            except (Conflict, UnknownModel) as e:
                self._failed[(ref.name, ref.version)] = stamp
                log.error("polling: %s", e.detail)
                continue
            loaded.append(f"{ref.name}@{ref.version}")
            if self.settings.MODEL_STORE_POLL_POLICY == "latest":
                try:
                    await self.promote(ref.name, ref.version, force=False)
                except Conflict as e:
                    log.warning("polling: loaded, not promoted: %s", e.detail)
        return loaded

    # -- the store, for the admin API -------------------------------------------------------
    def store_versions(self) -> list[dict[str, Any]]:
        """Every version in the store, with what its meta.json says (blocking: a thread)."""
        out = []
        for ref in list_checkpoints(self.registry.store, all_versions=True):
            entry = self.registry.entries.get(ref.name)
            lm = entry.versions.get(ref.version) if entry is not None else None
            row: dict[str, Any] = {
                "name": ref.name,
                "version": ref.version,
                "loaded": lm is not None,
                "status": lm.status if lm is not None else None,
                "variant": None,
                "valid_accuracy": None,
                "sha256": None,
                "created": None,
                "problem": None,
            }
            try:
                meta = read_meta(ref)
                metrics = meta.get("metrics") or []
                row |= {
                    "variant": meta.get("variant"),
                    "valid_accuracy": float(metrics[-1]["accuracy"]) if metrics else None,
                    "sha256": meta.get("sha256"),
                    "created": meta.get("created"),
                }
            except Exception as e:  # a damaged version is listed with its problem
                row["problem"] = str(e)[:300]
            out.append(row)
        return out


class Fleet:
    """The fleet's model state in Redis: a key every replica reads, a channel that says when
    it changed."""

    def __init__(self, url: str, prefix: str):
        self.url = redact_url(url)
        self.redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.key = f"{prefix}:models:state"
        self.channel = f"{prefix}:models"

    async def publish(self, state: dict[str, Any], only_if_none: bool = False) -> int:
        """Write `state` as the fleet's (only if there is none: `only_if_none`) and say so on
        the channel; its generation: Redis's clock, one clock for every replica."""
        try:
            seconds, micros = await self.redis.time()
            generation = int(seconds) * 1_000_000 + int(micros)
            raw = orjson.dumps({**state, "generation": generation}, option=orjson.OPT_SORT_KEYS)
            if only_if_none:
                if await self.redis.set(self.key, raw, nx=True):
                    await self.redis.publish(self.channel, raw)
                    return generation
                return 0
            await self.redis.set(self.key, raw)
            await self.redis.publish(self.channel, raw)
            return generation
        except RedisError as e:
            raise NotReady(
                f"the change was made on this replica, but the fleet's state (Redis at "
                f"{self.url}) could not be written: {e}. Other replicas will not follow it "
                "until it is made again"
            ) from None

    async def states(self, every_s: float) -> Any:
        """The stored state (bytes, or None when there is none) now, after each message and
        at least every `every_s`."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        try:
            yield await self.redis.get(self.key)
            last = time.monotonic()
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=every_s)
                if msg is not None or time.monotonic() - last >= every_s:
                    last = time.monotonic()
                    yield await self.redis.get(self.key)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()
