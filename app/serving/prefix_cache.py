"""The prefix cache of stateless requests: states after common prefixes, so a text that starts
with one feeds only the rest.

A GRU's whole memory of a prefix is its state (a few hundred bytes to 1.5 KB), so a cached
prefix costs the same whatever its length, and a hit is exact: the state is the one the
uncached path reaches at that point (the invariant "pieces == whole"), and the rest is fed
from it as a session would be.

Where states are kept: at word boundaries that texts are likely to share, after a "," (a
number's end). Not after every one: keeping a state inside a text splits its feeding there (a
step, then the rest), a pass of the engine more. A text that finds nothing keeps its state at
the last "," at or before each multiple of `BLOCK` tokens (a shared prompt's state is then
found at most `BLOCK` tokens before its end); a text that finds a state keeps one where it
parts from the latest longer text that found the same (a radix tree's split, found by
comparing the two texts' ids), so the third text of a shared prompt starts at its end. Every
text keeps its own end when it ends with "," (no split: a conversation's next request, which
extends it, finds it whole).

Keys: a dict keyed by (model version, scope, the prefix's token ids as bytes), the scope
being the owner under `per_key`. Not a trie: a lookup probes the text's "," positions from
the longest down (a slice, hashed and compared in C: exact, no digest that could collide),
only those at a length some entry of its scope has (a count of the lengths kept, so a text
whose own words hold many ","s is not hashed at each), eviction is an LRU's, and an entry is
its state and one byte a token of its prefix.

The timing channel: a hit is faster, so under `shared` a caller who times its own requests
can learn whether anyone sent a prefix recently (only that, never anyone's answer). `per_key`
keys every entry by the API key's owner as well: one key's prefixes never serve another's.
"""

from __future__ import annotations

import array
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from app.engine.engine import Engine
from app.engine.generation import Generation
from app.engine.params import SamplingParams
from app.engine.registry import LoadedModel
from app.engine.sequences import ExportedState, Sequence

BOUNDARY = ","  # the word after which texts of this data are cut (a number's end)
# A text that finds nothing keeps the state at the last boundary at or before each multiple
# of BLOCK tokens: 128 (two prefill chunks of the engine) costs a 1,200-token text 23 passes
# instead of 19 (measured), and leaves the second text of a shared prefix at most ~128 tokens
# (two passes) short of its end; the third finds it whole (the parting).
BLOCK = 128
# An entry's memory beyond its state's and its ids' bytes: the key and entry tuples, the
# ExportedState, the OrderedDict's node (tests/app/serving/test_prefix_cache.py checks
# the sum against tracemalloc).
ENTRY_OVERHEAD = 400


U32 = next(code for code in "IL" if array.array(code).itemsize == 4)  # numpy's uint32
Key = tuple[str, str, bytes]  # model version, owner (per_key) or "", the prefix's ids


@dataclass(slots=True)
class Counts:
    """One model version's numbers, for the metrics."""

    hits: int = 0
    misses: int = 0
    tokens_saved: int = 0
    bytes: int = 0
    entries: int = 0


@dataclass(slots=True)
class Entry:
    """A kept state, its memory as counted, its model version (NAME@VERSION), and the ids of
    the latest text that passed through it (a longer text: where the next one parts from it
    is a prefix worth keeping)."""

    saved: ExportedState
    size: int
    model: str
    longer: bytes = b""


@dataclass(slots=True)
class Plan:
    """How to feed one text: start from `saved` (None: the start state) after `start` ids,
    and keep the state at each of `keep` (position, key), in order."""

    start: int
    saved: ExportedState | None
    keep: list[tuple[int, Key]]
    text: bytes = b""  # the text's ids, as keys hold them


@dataclass
class PrefixCache:
    """States after prefixes, least recently used evicted past `max_bytes` (0: off)."""

    max_bytes: int
    per_key: bool = False
    _entries: OrderedDict[Key, Entry] = field(default_factory=OrderedDict)
    _counts: dict[str, Counts] = field(default_factory=dict)
    # how many entries of each scope (model version, owner) have a prefix of each length in
    # bytes: a lookup probes only these lengths
    _lengths: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    held: int = 0  # bytes of every entry, as `entry_bytes` counts them

    @property
    def on(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- lookup and keeping ------------------------------------------------------------------
    def plan(self, lm: LoadedModel, owner: str, ids: list[int]) -> Plan:
        """Where to start `ids` from (the longest cached prefix) and which states to keep."""
        counts = self._counts_of(lm)
        comma = lm.vocab.stoi.get(BOUNDARY)
        if comma is None:
            counts.misses += 1
            return Plan(0, None, [])
        # the ids as bytes, in C (numpy's conversion of a list takes three times as long)
        small = len(lm.vocab) <= 256
        data = bytes(ids) if small else array.array(U32, ids).tobytes()
        dtype = np.dtype(np.uint8 if small else np.uint32)
        tokens = np.frombuffer(data, dtype=dtype)
        width = tokens.itemsize
        scope = (lm.key, owner if self.per_key else "")
        ends = np.flatnonzero(tokens == comma) + 1  # positions after a ","
        # probed from the longest down, at the lengths kept in this scope; a key is made only
        # for those probed or kept
        hit = 0
        found: Entry | None = None
        lengths = self._lengths.get(scope, {})
        for n in ends[::-1].tolist():
            if n * width not in lengths:
                continue
            key = (*scope, data[: n * width])
            if (found := self._entries.get(key)) is not None:
                self._entries.move_to_end(key)
                hit = n
                break
        parts = 0  # where this text parts from the latest longer one through the hit
        if found is None:
            counts.misses += 1
        else:
            counts.hits += 1
            counts.tokens_saved += hit
            if found.longer:
                other = np.frombuffer(found.longer, dtype=dtype)
                m = min(len(other), len(tokens))
                parts = int(np.argmin(np.append(other[:m] == tokens[:m], False)))
            self._resize(found, data)
        # kept: the text's end if it is a boundary; after a miss, each boundary that is the
        # last at or before a multiple of BLOCK (the multiple within the text: before the
        # next boundary, or the text's end); after a hit, where this text parts from the
        # latest longer one through the hit (a radix tree's split), the last boundary at or
        # before it: the next text that shares their prefix finds it whole. (Not the blocks
        # past a hit too: a text's own words would cost it a split each, and a prefix that
        # others share is found by the parting once a second text has it.)
        kept = ends == len(ids)
        if found is None:
            following = np.append(ends[1:], len(ids) + 1)
            kept |= -(-ends // BLOCK) * BLOCK < following
        elif parts > hit:
            kept[np.searchsorted(ends, parts, side="right") - 1] = True
        kept &= ends > hit
        keep = [(n, (*scope, data[: n * width])) for n in ends[kept].tolist()]
        return Plan(hit, None if found is None else found.saved, keep, data)

    def put(self, lm: LoadedModel, key: Key, saved: ExportedState, text: bytes = b"") -> None:
        """Keep `saved` under `key` (the state after a prefix of `text`'s ids), evicting the
        least recently used past the bound."""
        if lm.status == "draining" or key in self._entries:  # a draining version's are dropped
            return
        entry = Entry(saved, entry_bytes(key, saved), lm.key)
        counts = self._counts_of(lm)
        self._entries[key] = entry
        lengths = self._lengths.setdefault(key[:2], {})
        lengths[len(key[2])] = lengths.get(len(key[2]), 0) + 1
        self.held += entry.size
        counts.bytes += entry.size
        counts.entries += 1
        self._resize(entry, text)

    def _resize(self, entry: Entry, longer: bytes) -> None:
        """Note `longer` as the latest text through `entry`, and evict past the bound."""
        grown = sys.getsizeof(longer) - sys.getsizeof(entry.longer)
        entry.longer = longer
        entry.size += grown
        self.held += grown
        if (counts := self._counts.get(entry.model)) is not None:
            counts.bytes += grown
        while self.held > self.max_bytes:
            key, gone = self._entries.popitem(last=False)
            self._forget(key)
            self.held -= gone.size
            if (counts := self._counts.get(gone.model)) is not None:
                counts.bytes -= gone.size
                counts.entries -= 1

    def drop(self, lm: LoadedModel) -> None:
        """Forget a version's states (it is unloaded) and its numbers."""
        key = lm.key
        for k in [k for k, e in self._entries.items() if e.model == key]:
            self.held -= self._entries.pop(k).size
            self._forget(k)
        self._counts.pop(key, None)

    def _forget(self, key: Key) -> None:
        """Uncount a removed entry's prefix length."""
        scope = key[:2]
        lengths = self._lengths[scope]
        n = len(key[2])
        if lengths[n] > 1:
            lengths[n] -= 1
        else:
            del lengths[n]
            if not lengths:
                del self._lengths[scope]

    def _counts_of(self, lm: LoadedModel) -> Counts:
        counts = self._counts.get(lm.key)
        if counts is None:
            counts = self._counts[lm.key] = Counts()
        return counts

    def counts(self) -> Iterator[tuple[str, str, tuple[int, int, int, int, int]]]:
        """(model, version, (hits, misses, tokens saved, bytes, entries)) of every version
        the cache served: the metrics, at scrape time."""
        for key, c in list(self._counts.items()):
            name, _, version = key.rpartition("@")
            yield name, version, (c.hits, c.misses, c.tokens_saved, c.bytes, c.entries)

    # -- feeding -----------------------------------------------------------------------------
    async def _open(
        self, lm: LoadedModel, owner: str, ids: list[int]
    ) -> tuple[Sequence, int, Key | None]:
        """A sequence that has seen `ids` up to its last kept state inside the text (the
        states on the way kept), where it stands in `ids`, and the key of the text's end
        when that is to be kept too. With the cache off: a fresh sequence, nothing kept."""
        if not self.on:
            return lm.engine.open(), 0, None
        plan = self.plan(lm, owner, ids)
        engine: Engine = lm.engine
        seq = engine.open(plan.saved)
        try:
            at = plan.start
            for n, key in plan.keep:
                if n == len(ids):  # the text's end: kept once the request fed it
                    break
                await seq.step(ids[at:n], 0, timed=False)
                self.put(lm, key, seq.export(), plan.text)
                at = n
        except BaseException:
            seq.close()
            raise
        end = plan.keep[-1][1] if plan.keep and plan.keep[-1][0] == len(ids) else None
        return seq, at, end

    async def step(
        self, lm: LoadedModel, owner: str, ids: list[int], top_k: int
    ) -> list[tuple[int, float]]:
        """`Sequence.step` of a new sequence fed `ids`: its `top_k` next words."""
        seq, at, end = await self._open(lm, owner, ids)
        try:
            top = await seq.step(ids[at:], top_k)
            if end is not None:
                self.put(lm, end, seq.export())
            return top
        finally:
            seq.close()

    async def open(self, lm: LoadedModel, owner: str, ids: list[int]) -> tuple[Sequence, int]:
        """A new sequence to generate from after `ids`, and how many of them its state has
        seen (the rest are the generation's to feed): from the longest cached prefix, the
        states on the way kept, and the text's end too when it is a boundary (fed first
        then). The caller closes the sequence."""
        seq, at, end = await self._open(lm, owner, ids)
        try:
            if end is not None:
                await seq.step(ids[at:], 0, timed=False)
                self.put(lm, end, seq.export())
                at = len(ids)
        except BaseException:
            seq.close()
            raise
        return seq, at

    async def generate(
        self, lm: LoadedModel, owner: str, ids: list[int], params: SamplingParams
    ) -> Generation:
        """`Sequence.generate` of a new sequence fed `ids`."""
        seq, at = await self.open(lm, owner, ids)
        try:
            return await seq.generate(ids[at:], params)
        finally:
            seq.close()


def entry_bytes(key: Key, saved: ExportedState) -> int:
    """What an entry holds in memory, as counted against the bound."""
    return (
        sys.getsizeof(key[2])
        + sys.getsizeof(saved.data)
        + sys.getsizeof(saved.dtype)
        + sys.getsizeof(saved.shape)
        + ENTRY_OVERHEAD
    )
