"""The loaded models: every usable checkpoint of the store, on the chosen device, by version.

A model NAME has one or more loaded versions (`store/NAME/VERSION/`), each a `LoadedModel`
with its own engine. A request addresses `NAME` (its default version, or a version drawn by
its traffic split) or `NAME@VERSION` (pinned). A version is loaded, warmed up with a real
step through its engine and only then added: load first, swap after (Triton's #2076). One
being unloaded drains: it takes no new work, and once its last sequence closes or its grace
period ends, its engine stops and its memory is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from app.core.errors import Conflict, Gone, UnknownModel
from app.core.redact import clip, short_digests
from app.engine.engine import Engine, EngineConfig
from model_store import (
    PREFERRED_DEFAULTS,
    BadCheckpoint,
    Checkpoint,
    CheckpointRef,
    Vocab,
    compile_cell,
    count_parameters,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_device,
)

log = logging.getLogger("app.models")

Status = Literal["loading", "ready", "draining"]
SETTLE_S = 5.0  # after an unload's grace, how long work under way may take to end


@dataclass(eq=False)
class LoadedModel:
    checkpoint: Checkpoint
    device: torch.device
    engine: Engine
    status: Status = "ready"
    label: bytes = field(init=False)  # `key` as bytes: the X-Model-Version header's value

    def __post_init__(self) -> None:
        self.label = self.key.encode()

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def version(self) -> int:
        return self.checkpoint.ref.version

    @property
    def key(self) -> str:
        """NAME@VERSION: how a request pins this version, and how answers name it."""
        return f"{self.checkpoint.name}@{self.checkpoint.ref.version}"

    @property
    def vocab(self) -> Vocab:
        return self.checkpoint.vocab

    @property
    def parameters(self) -> int:
        return count_parameters(self.checkpoint.model)


class NoUsableModel(RuntimeError):
    pass


def parse_ref(ref: str) -> tuple[str, int | None]:
    """A model reference, NAME or NAME@VERSION, as (name, version or None); UnknownModel if
    the version is not a positive whole number."""
    name, at, version = ref.partition("@")
    if not at:
        return ref, None
    if not version.isdigit() or not 0 < int(version) < 2**31:
        raise UnknownModel(
            f"model {clip(ref)}: a version is a positive whole number, as in {name}@1"
        )
    return name, int(version)


@dataclass(eq=False)
class ModelEntry:
    """One model name: its loaded versions, which one answers by default, the one before it
    (for a rollback) and a traffic split among ready versions (None: all to the default)."""

    name: str
    versions: dict[int, LoadedModel]
    default: int
    previous: int | None = None
    split: dict[int, int] | None = None  # version -> percent, summing to 100

    @property
    def current(self) -> LoadedModel:
        return self.versions[self.default]

    def pick(self) -> LoadedModel:
        """The version that serves a new session or stateless request under `NAME`."""
        if self.split is None:
            return self.versions[self.default]
        draw = random.random() * 100
        for version, share in self.split.items():
            draw -= share
            if draw < 0:
                return self.versions[version]
        return self.versions[self.default]

    def ready(self) -> set[int]:
        """The versions that may take new work."""
        return {v for v, lm in self.versions.items() if lm.status == "ready"}

    def share(self, version: int) -> float:
        """Percent of new work under `NAME` that goes to `version`."""
        if self.split is None:
            return 100.0 if version == self.default else 0.0
        return float(self.split.get(version, 0))

    def state(self) -> dict[str, Any]:
        """What an admin change leaves (JSON): the fleet's state of this name."""
        return {
            "versions": sorted(v for v, lm in self.versions.items() if lm.status != "draining"),
            "default": self.default,
            "previous": self.previous,
            "split": None if self.split is None else {str(v): s for v, s in self.split.items()},
        }


@dataclass(eq=False)
class ModelRegistry:
    entries: dict[str, ModelEntry]
    default: str
    problems: list[str] = field(default_factory=list)  # checkpoints refused, and why
    store: Path = Path("store")
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    engine_config: EngineConfig = field(default_factory=EngineConfig)
    cell_mode: str = "eager"
    # given each new engine (the metrics' observer), before it starts
    on_engine: Callable[[LoadedModel], None] | None = None
    on_unloaded: Callable[[LoadedModel], None] | None = None  # told once a version is gone
    # versions unloaded, as NAME@VERSION: their late sessions are told so (410)
    retired: set[str] = field(default_factory=set)
    _draining: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _busy: asyncio.Lock | None = None

    @classmethod
    def load(
        cls,
        store: Path,
        device_name: str,
        default: str | None,
        engine_config: EngineConfig,
        cell_mode: str = "eager",
    ) -> ModelRegistry:
        """Load the latest version of every checkpoint; skip bad ones, saying which and why."""
        try:
            device = resolve_device(device_name)
        except ValueError as e:
            raise NoUsableModel(f"DEVICE={device_name}: {e}") from None
        entries: dict[str, ModelEntry] = {}
        problems: list[str] = []
        registry = cls({}, "", problems, store, device, engine_config, cell_mode)
        for ref in list_checkpoints(store):
            try:
                lm = registry.build(ref)
            except BadCheckpoint as e:
                # /ready shows these publicly: the store-relative name, digests cut short
                where = e.path.relative_to(store) if e.path.is_relative_to(store) else e.path.name
                problems.append(f"{where}: {short_digests(e.problem)}")
                log.error("skipping checkpoint %s", e)
                continue
            except (RuntimeError, MemoryError, OSError, ValueError, RecursionError) as e:
                # what the checks did not foresee still costs this checkpoint alone
                where = ref.path.relative_to(store) if ref.path.is_relative_to(store) else ref.path
                problems.append(f"{where}: could not be loaded ({type(e).__name__})")
                log.error("skipping checkpoint %s: %s: %s", ref.path, type(e).__name__, e)
                continue
            entries[ref.name] = ModelEntry(ref.name, {ref.version: lm}, ref.version)
            log.info(
                "loaded %s v%d (%s) on %s",
                ref.name,
                ref.version,
                lm.checkpoint.config.variant,
                device,
            )
        if not entries:
            why = "; ".join(problems) if problems else "it holds no checkpoints"
            raise NoUsableModel(
                f"no usable checkpoint in {store}: {why}. "
                f"Train some with: python -m training train-all --store {store}"
            )
        if default is None:
            default = next((n for n in PREFERRED_DEFAULTS if n in entries), sorted(entries)[0])
        elif default not in entries:
            raise NoUsableModel(
                f"DEFAULT_MODEL={default!r} is not among the loaded models: {', '.join(entries)}"
            )
        registry.entries, registry.default = entries, default
        return registry

    def build(self, ref: CheckpointRef) -> LoadedModel:
        """A checkpoint loaded, verified and its engine built (not started): blocking work."""
        ckpt = load_checkpoint(ref, self.device)
        compile_cell(ckpt.model, self.cell_mode)
        engine = Engine(ckpt.model, ckpt.vocab, self.device, self.engine_config, name=ref.name)
        return LoadedModel(ckpt, self.device, engine)

    # -- looking up ------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, LoadedModel]:
        """Each name's default version."""
        return {name: e.current for name, e in self.entries.items()}

    def loaded(self) -> Iterator[LoadedModel]:
        """Every loaded version, draining ones included."""
        for entry in self.entries.values():
            yield from entry.versions.values()

    def resolve(self, ref: str | None) -> LoadedModel:
        """The version that serves a new session or stateless request: `NAME` by its split
        or default, `NAME@VERSION` pinned; UnknownModel (404) or Gone (410) if none."""
        if ref is None:
            return self.entries[self.default].pick()
        entry = self.entries.get(ref)
        if entry is not None:
            return entry.pick()
        name, version = parse_ref(ref)
        entry = self.entries.get(name)
        if entry is None or version is None:
            raise self.unknown(ref)
        lm = entry.versions.get(version)
        if lm is None:
            if f"{name}@{version}" in self.retired:
                raise retired(f"{name}@{version}")
            raise UnknownModel(
                f"model {clip(name)} has no version {version} loaded; loaded: "
                + ", ".join(f"{name}@{v}" for v in sorted(entry.versions))
            )
        if lm.status != "ready":
            raise Gone(
                f"model {lm.key} is being unloaded and takes no new work: "
                f"use {name} or {entry.current.key}"
            )
        return lm

    def version(self, name: str, version: int | None) -> LoadedModel:
        """The version that holds a session's state (draining ones too: a session lives on
        the version that made it); None as version: the name's default (records written
        before versions were recorded). UnknownModel or Gone if it is not loaded."""
        entry = self.entries.get(name)
        if entry is None:
            raise self.unknown(name)
        if version is None:
            return entry.current
        lm = entry.versions.get(version)
        if lm is None:
            raise retired(f"{name}@{version}")
        return lm

    def unknown(self, ref: str) -> UnknownModel:
        return UnknownModel(f"no model {clip(ref)}; loaded: {', '.join(sorted(self.entries))}")

    # -- changing (the admin API, the store's poller, the fleet's state) --------------------
    @property
    def busy(self) -> asyncio.Lock:
        """Admin changes apply one at a time."""
        if self._busy is None:
            self._busy = asyncio.Lock()
        return self._busy

    async def add_version(self, name: str, version: int | None) -> LoadedModel:
        """Load `name`'s `version` (its latest in the store when None) beside the loaded ones:
        checked, built and warmed up with a real step off the event loop's back, then added
        as ready (a new name's first version becomes its default). One that fails to load
        or warm up never takes traffic: the error says why, the old versions serve on."""
        try:
            ref = find_checkpoint(self.store, name, version)
        except (FileNotFoundError, ValueError) as e:
            raise UnknownModel(f"{e}: GET /admin/store lists the store's versions") from None
        entry = self.entries.get(name)
        if entry is not None and ref.version in entry.versions:
            lm = entry.versions[ref.version]
            if lm.status == "draining":
                raise Conflict(f"{lm.key} is being unloaded; load it again once it is gone")
            return lm
        try:
            lm = await asyncio.to_thread(self.build, ref)
        except BadCheckpoint as e:
            raise LoadFailed(
                f"{name}@{ref.version} was refused: {short_digests(e.problem)}"
            ) from None
        except (RuntimeError, MemoryError, OSError, ValueError, RecursionError) as e:
            raise LoadFailed(
                f"{name}@{ref.version} could not be loaded: {type(e).__name__}: {str(e)[:200]}"
            ) from None
        lm.status = "loading"
        if self.on_engine is not None:
            self.on_engine(lm)
        lm.engine.start()
        try:
            await warm_up(lm)
        except BaseException as e:
            await lm.engine.stop()
            if isinstance(e, Exception):
                raise LoadFailed(
                    f"{lm.key} failed its warm-up step: {type(e).__name__}: {str(e)[:200]}"
                ) from None
            raise
        lm.status = "ready"
        self.retired.discard(lm.key)
        entry = self.entries.get(name)  # again: the world may have moved while it loaded
        if entry is None:
            self.entries[name] = ModelEntry(name, {lm.version: lm}, lm.version)
        else:
            entry.versions[lm.version] = lm
        log.info("loaded %s (%s) on %s", lm.key, lm.checkpoint.config.variant, self.device)
        return lm

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def ready_version(self, entry: ModelEntry, version: int) -> LoadedModel:
        lm = entry.versions.get(version)
        if lm is None:
            raise UnknownModel(
                f"model {entry.name} has no version {version} loaded; load it first "
                f"(POST /admin/models/{entry.name}/load)"
            )
        if lm.status != "ready":
            raise Conflict(f"{lm.key} is {lm.status}: it cannot take traffic")
        return lm

    def promote(self, name: str, version: int, force: bool = False) -> ModelEntry:
        """Make `version` the default of `name` (its split ends): refused (409) if its valid
        accuracy is below the current default's, unless `force`."""
        entry = self.entry(name)
        lm = self.ready_version(entry, version)
        current = entry.current
        new_acc, old_acc = lm.checkpoint.valid_accuracy, current.checkpoint.valid_accuracy
        if (
            not force
            and version != entry.default
            and old_acc is not None
            and (new_acc is None or new_acc < old_acc)
        ):
            shown = "not recorded" if new_acc is None else f"{new_acc:.4f}"
            raise Conflict(
                f"{lm.key}'s valid accuracy ({shown}) is below the default {current.key}'s "
                f"({old_acc:.4f}): not promoted. Send force: true to promote it anyway"
            )
        if version != entry.default:
            entry.previous, entry.default = entry.default, version
        entry.split = None
        log.info("%s is now the default of %s", lm.key, name)
        return entry

    def rollback(self, name: str) -> ModelEntry:
        """Back to the default before the current one (which stays loaded)."""
        entry = self.entry(name)
        if entry.previous is None or entry.previous not in entry.versions:
            raise Conflict(f"model {name} has no previous default loaded to roll back to")
        self.ready_version(entry, entry.previous)
        entry.default, entry.previous = entry.previous, entry.default
        entry.split = None
        log.info("%s rolled back to %s", name, entry.current.key)
        return entry

    def set_split(self, name: str, shares: dict[int, int] | None) -> ModelEntry:
        """New sessions and stateless requests under `name` go to ready versions by these
        percents (whole numbers summing to 100); None ends the split."""
        entry = self.entry(name)
        if shares is not None:
            for version in shares:
                self.ready_version(entry, version)
            if sum(shares.values()) != 100 or any(s < 0 for s in shares.values()):
                raise BadSplit(
                    f"the shares are {sorted(shares.values())}: give whole percents, none "
                    "negative, that sum to 100"
                )
            shares = {v: s for v, s in sorted(shares.items()) if s > 0}
            if entry.default not in shares:  # the default is the one with the largest share
                entry.previous, entry.default = entry.default, max(shares, key=shares.get)  # type: ignore[arg-type]
        entry.split = shares
        return entry

    def unload(
        self,
        name: str,
        version: int,
        grace_s: float,
        on_gone: Callable[[LoadedModel], Any],
        waits: Callable[[LoadedModel], Any] = lambda lm: bool(lm.engine.open_sequences),
    ) -> LoadedModel:
        """Drain `version`: it takes no new work at once; once `waits` (a function, or a
        coroutine function) says nothing is left for it to serve (by default: its last
        sequence closed), or after `grace_s`,
        `on_gone` ends its sessions, its engine stops and it is dropped."""
        entry = self.entry(name)
        lm = entry.versions.get(version)
        if lm is None:
            raise UnknownModel(f"model {name} has no version {version} loaded")
        if version == entry.default:
            raise Conflict(
                f"{lm.key} is the default of {name}: promote another version first "
                f"(POST /admin/models/{name}/promote)"
            )
        if entry.split is not None and entry.split.get(version):
            raise Conflict(
                f"{lm.key} has {entry.split[version]}% of {name}'s traffic: change the split first"
            )
        if lm.status != "draining":
            lm.status = "draining"
            self._draining[lm.key] = asyncio.get_running_loop().create_task(
                self._drain(entry, lm, grace_s, on_gone, waits), name=f"drain-{lm.key}"
            )
            log.info("%s is draining (grace %.1f s)", lm.key, grace_s)
        return lm

    async def _drain(
        self,
        entry: ModelEntry,
        lm: LoadedModel,
        grace_s: float,
        on_gone: Callable[[LoadedModel], Any],
        waits: Callable[[LoadedModel], Any],
    ) -> None:
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(asyncio.CancelledError):
            while time.monotonic() < deadline:
                busy = waits(lm)
                if asyncio.iscoroutine(busy):
                    busy = await busy
                if not busy:
                    break
                await asyncio.sleep(0.05)
            # the grace is over: work under way (a step, a generation) ends first, for a few
            # seconds at most, so a request in flight is answered, not cut by the stop
            settle = time.monotonic() + SETTLE_S
            while lm.engine.queued and time.monotonic() < settle:
                await asyncio.sleep(0.01)
        try:
            got = on_gone(lm)
            if asyncio.iscoroutine(got):
                await got
        finally:
            entry.versions.pop(lm.version, None)
            if entry.previous == lm.version:
                entry.previous = None
            self.retired.add(lm.key)
            await lm.engine.stop()
            self._draining.pop(lm.key, None)
            if self.on_unloaded is not None:
                self.on_unloaded(lm)
            log.info("unloaded %s", lm.key)
            del lm
            release_memory()

    async def drained(self) -> None:
        """Wait for every drain under way (tests, shutdown)."""
        while self._draining:
            await asyncio.wait(list(self._draining.values()))

    async def stop(self) -> None:
        for task in list(self._draining.values()):
            task.cancel()
        await self.drained()
        for lm in list(self.loaded()):
            await lm.engine.stop()


class LoadFailed(Conflict):
    """A version that could not be loaded or warmed up (it takes no traffic)."""


class BadSplit(Conflict):
    pass


def retired(key: str) -> Gone:
    return Gone(
        f"model version {key} was unloaded from this server: its sessions ended with it; "
        "start a new session (GET /v1/models lists the versions served)"
    )


async def warm_up(lm: LoadedModel) -> None:
    """One real step through the version's engine: its first answers cost no first-call
    work, and a model that cannot step never takes traffic."""
    words = [w for w in lm.vocab.typable if w != "xxbos"][:2] or list(lm.vocab.itos[:1])
    seq = lm.engine.open()
    try:
        top = await seq.step(lm.vocab.encode(" ".join(words)), 1)
    finally:
        seq.close()
    if not top or not all(0.0 <= p <= 1.0 for _, p in top):
        raise RuntimeError(f"the warm-up step gave {top!r}")


def release_memory() -> None:
    """Collect what an unloaded version left: the startup's `gc.freeze` keeps objects out of
    the cyclic collector's sight, so thaw, collect and freeze again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
