"""The prefix cache of stateless requests: answers equal to the uncached path's, whatever was
cached and by whom; its memory under PREFIX_CACHE_MB; per_key keys never serve one another;
an unloaded version's states go with it."""

from __future__ import annotations

import asyncio
import json
import random
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from app.engine.sequences import ExportedState
from app.main import create_app
from app.serving.prefix_cache import BLOCK, PrefixCache, entry_bytes
from launchers import PROB_TOL
from model_store import Vocab, find_checkpoint, load_checkpoint, save_checkpoint
from tests.app.conftest import VARIANTS, make_settings, run_app
from training.data import number_words

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


def numbers(rng: random.Random, count: int) -> list[str]:
    """`count` numbers of the data's range as tokens, each followed by ","."""
    out: list[str] = []
    for _ in range(count):
        out += [*number_words(rng.randint(1, 9999)).split(), ","]
    return out


def texts(rng: random.Random) -> list[str]:
    """Shared prefixes (short and past several BLOCKs) with suffixes that end on "," or
    inside a number, repeated and extended texts (hits at the end), and unshared ones."""
    bases = [numbers(rng, rng.randint(1, 90)) for _ in range(4)]
    out = []
    for _ in range(36):
        base = rng.choice(bases)
        tail = numbers(rng, rng.randint(0, 12))
        if rng.random() < 0.5:  # end inside a number
            tail += number_words(rng.randint(1, 9999)).split()[: rng.randint(1, 3)]
        cut = rng.randint(1, len(base)) if rng.random() < 0.3 else len(base)  # a shorter share
        out.append(" ".join(base[:cut] + tail))
    out += [" ".join(numbers(rng, rng.randint(1, 40))) for _ in range(6)]  # unshared
    out += out[:6]  # repeated: whole hits
    rng.shuffle(out)
    return out


async def streamed(c: Any, body: dict[str, Any]) -> dict[str, Any]:
    """A streamed continuation's words and probabilities, as the unstreamed answer has them."""
    r = await c.post("/v1/continuation", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert "finish_reason" in events[-1], events[-1]
    return {"words": [e["word"] for e in events[:-1]], "probs": [e["prob"] for e in events[:-1]]}


async def answers(c: Any, model: str, batch: list[str], together: bool) -> list[Any]:
    """Each text's next words (the whole vocabulary) and its greedy and sampled
    continuations, the sampled one also streamed; all at once (batched with one another) or
    one after another."""

    async def one(text: str) -> Any:
        nxt = await c.post("/v1/next-word", json={"text": text, "model": model, "top_k": 40})
        assert nxt.status_code == 200, nxt.text
        greedy = await c.post(
            "/v1/continuation", json={"text": text, "model": model, "max_words": 6}
        )
        sample = {"text": text, "model": model, "max_words": 6, "temperature": 1, "seed": 5}
        sampled = await c.post("/v1/continuation", json=sample)
        return nxt.json()["next"], greedy.json(), sampled.json(), await streamed(c, sample)

    if together:
        return list(await asyncio.gather(*(one(t) for t in batch)))
    return [await one(t) for t in batch]


def lengths_right(cache: PrefixCache) -> bool:
    """The index of kept prefix lengths that a lookup probes by is its entries', exactly."""
    want: dict[tuple[str, str], dict[int, int]] = {}
    for version, owner, ids in cache._entries:
        counts = want.setdefault((version, owner), {})
        counts[len(ids)] = counts.get(len(ids), 0) + 1
    return cache._lengths == want


def same(cached: list[Any], uncached: list[Any]) -> None:
    """The same words, probabilities within PROB_TOL (1e-5 on a CPU), the invariant suite's
    bound: the uncached path itself differs by up to 1.4e-6 batched and alone (gru-copy), and
    the cache's answers differ from it by as much (measured: 3e-7 to 1.1e-6 asked one by one;
    on CUDA up to 1.2e-5, hence 1e-4 there)."""
    for (nxt, *gens), (nxt0, *gens0) in zip(cached, uncached, strict=True):
        assert [w["word"] for w in nxt] == [w["word"] for w in nxt0]
        for w, w0 in zip(nxt, nxt0, strict=True):
            assert w["prob"] == pytest.approx(w0["prob"], abs=PROB_TOL)
        for got, want in zip(gens, gens0, strict=True):
            assert got["words"] == want["words"]
            assert got["probs"] == pytest.approx(want["probs"], abs=PROB_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_answers_equal_the_uncached_ones(store, variant):
    """Randomized texts with and without shared prefixes, asked concurrently (their states
    kept and found while others feed) and then again one by one (from warm entries)."""
    rng = random.Random(variant)
    batch = texts(rng)
    uncached = run_app(
        create_app(make_settings(store, PREFIX_CACHE_MB=0)),
        lambda c: answers(c, variant, batch, together=False),
    )
    app = create_app(make_settings(store, PREFIX_CACHE_MB=8))
    counts: dict[str, Any] = {}

    async def scenario(c: Any) -> tuple[list[Any], list[Any]]:
        first = await answers(c, variant, batch, together=True)
        again = await answers(c, variant, batch, together=False)
        counts.update({m: n for m, _, n in app.state.service.prefix_cache.counts()})
        return first, again

    first, again = run_app(app, scenario)
    same(first, uncached)
    same(again, uncached)
    hits, misses, saved, held, entries = counts[variant]
    assert hits > len(batch) and misses > 0 and saved > 0 and 0 < held <= 8 * 2**20
    assert entries > len(batch) // 2  # states kept inside texts, not only at their ends


def test_states_are_kept_at_the_last_boundary_before_each_block_and_at_the_end(store):
    app = create_app(make_settings(store, PREFIX_CACHE_MB=8))

    async def scenario(c: Any) -> None:
        service = app.state.service
        lm = service.model("gru")
        words = numbers(random.Random(3), 70)  # ~420 tokens
        ids = lm.vocab.encode(" ".join(words))
        ends = [i + 1 for i, t in enumerate(ids) if t == lm.vocab.stoi[","]]
        want = [max(n for n in ends if n <= m) for m in range(BLOCK, len(ids) + 1, BLOCK)]
        plan = service.prefix_cache.plan(lm, "", ids)
        assert plan.start == 0 and plan.saved is None
        assert [n for n, _ in plan.keep] == [*want, len(ids)]  # the text ends with ","
        inside = ids[: len(ids) - 2]  # ends inside its last number: that end is not kept
        assert [n for n, _ in service.prefix_cache.plan(lm, "", inside).keep] == want
        r = await c.post("/v1/next-word", json={"text": " ".join(words), "model": "gru"})
        assert r.status_code == 200
        assert len(service.prefix_cache) == len(want) + 1
        # a longer text finds the whole, and keeps only what lies past it
        longer = ids + lm.vocab.encode("one , two")
        plan = service.prefix_cache.plan(lm, "", longer)
        assert plan.start == len(ids) and plan.saved is not None
        # its "," past the hit is neither its end nor the last before a block within it
        assert plan.keep == []
        # a text that shares a prefix up to a block's state starts there
        other = ids[: want[-1]] + lm.vocab.encode("five")
        assert service.prefix_cache.plan(lm, "", other).start == want[-1]
        # two texts that part after a shared prefix: the second keeps the state where they
        # part (the last "," before), and a third that shares it starts there
        rng = random.Random(8)
        shared = numbers(rng, 50)  # some 300 tokens: past a block
        x, y, z = (lm.vocab.encode(" ".join(shared + numbers(rng, 30))) for _ in range(3))
        await service.prefix_cache.step(lm, "", x, 1)
        assert ("gru@1", "", bytes(y[: len(shared)])) not in service.prefix_cache._entries
        await service.prefix_cache.step(lm, "", y, 1)  # found x's block state, then parted
        assert ("gru@1", "", bytes(y[: len(shared)])) in service.prefix_cache._entries
        assert service.prefix_cache.plan(lm, "", z).start == len(shared)

    run_app(app, scenario)


def test_per_key_scope_never_serves_another_keys_prefix(store):
    text = " ".join(numbers(random.Random(4), 40))

    def misses(scope: str) -> tuple[int, int]:
        settings = make_settings(store, PREFIX_CACHE_SCOPE=scope, API_KEYS=f"{KEY_A},{KEY_B}")
        app = create_app(settings)

        async def scenario(c: Any) -> tuple[int, int]:
            for key, path, extra in (
                (KEY_A, "/v1/next-word", {}),
                (KEY_B, "/v1/continuation", {"stream": True}),  # a stream is the key's too
                (KEY_B, "/v1/next-word", {}),
            ):
                r = await c.post(
                    path,
                    json={"text": text, "model": "gru", **extra},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 200
            ((_, _, (hits, miss, *_)),) = app.state.service.prefix_cache.counts()
            return hits, miss

        return run_app(app, scenario)

    assert misses("shared") == (2, 1)  # B's first request (a stream) found A's prefix
    assert misses("per_key") == (1, 2)  # only its own second one found B's (the stream's)


def test_memory_stays_under_the_bound(store):
    """Past the bound the least recently used go; the bytes counted are what the entries
    hold (tracemalloc agrees within a third), and never pass the bound."""
    app = create_app(make_settings(store, PREFIX_CACHE_MB=8))

    async def scenario(c: Any) -> None:
        lm = app.state.service.model("gru-copy")
        state = lm.engine.zero_export
        bound = 200_000
        cache = PrefixCache(bound)
        size = entry_bytes(("gru-copy@1", "", bytes(8)), state)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(bound // size):  # below the bound: nothing evicted
            data = bytes(state.data[:-8]) + i.to_bytes(8)  # a state of its own
            key = ("gru-copy@1", "", i.to_bytes(8))
            cache.put(lm, key, ExportedState(state.dtype, state.shape, data))
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(cache) == bound // size
        assert cache.held == pytest.approx(grown, rel=1 / 3)
        for i in range(10_000):  # far past it
            data = bytes(state.data[:-8]) + (i + 10**6).to_bytes(8)
            key = ("gru-copy@1", "", (i + 10**6).to_bytes(8))
            cache.put(lm, key, ExportedState(state.dtype, state.shape, data))
            assert cache.held <= bound
        assert len(cache) == bound // size
        assert cache.plan(lm, "", [1]).start == 0
        assert ("gru-copy@1", "", (1).to_bytes(8)) not in cache._entries  # the oldest first
        assert ("gru-copy@1", "", (10**6 + 9_999).to_bytes(8)) in cache._entries
        assert lengths_right(cache)

    run_app(app, scenario)
    # through the service: many long distinct texts under a small bound
    app = create_app(make_settings(store, PREFIX_CACHE_MB=0.02))  # 20,971 bytes

    async def served(c: Any) -> None:
        service = app.state.service
        rng = random.Random(5)
        for _ in range(30):
            text = " ".join(numbers(rng, 60))
            r = await c.post("/v1/next-word", json={"text": text, "model": "gru-copy"})
            assert r.status_code == 200
            assert 0 < service.prefix_cache.held <= 0.02 * 2**20
            assert lengths_right(service.prefix_cache)
        metrics = (await c.get("/metrics")).text
        line = next(x for x in metrics.splitlines() if x.startswith("prefix_cache_bytes{"))
        assert 'model="gru-copy"' in line and float(line.split()[-1]) == service.prefix_cache.held
        assert 'prefix_cache_misses_total{model="gru-copy",version="1"} 30.0' in metrics

    run_app(app, served)


def test_an_unloaded_versions_states_go_with_it(store: Path, tmp_path: Path):
    root = tmp_path / "store"
    ckpt = load_checkpoint(find_checkpoint(store, "gru", None))
    save_checkpoint(root, "gru", ckpt.model, ckpt.vocab, metrics=ckpt.metrics)
    admin = "admin-key-0123456789abcdef"
    as_admin = {"Authorization": f"Bearer {admin}"}
    app = create_app(make_settings(root, ADMIN_API_KEYS=admin, DEFAULT_MODEL="gru"))
    text = " ".join(numbers(random.Random(6), 50))

    async def scenario(c: Any) -> None:
        service = app.state.service
        # version 2: the same weights, a better recorded accuracy (the quality gate's)
        metrics = [{**ckpt.metrics[-1], "accuracy": ckpt.metrics[-1]["accuracy"] + 0.01}]
        save_checkpoint(root, "gru", ckpt.model, ckpt.vocab, metrics=metrics)
        r = await c.post("/admin/models/gru/load", json={"version": 2}, headers=as_admin)
        assert r.status_code == 200, r.text
        for model in ("gru@1", "gru@2", "gru@2"):
            r = await c.post("/v1/next-word", json={"text": text, "model": model})
            assert r.status_code == 200 and r.json()["version"] == int(model[-1])
        # the same weights, yet each version's states are its own: gru@2 missed once
        assert {v: n[:2] for _, v, n in service.prefix_cache.counts()} == {
            "1": (0, 1),
            "2": (1, 1),
        }
        ours = {v: n[3] for _, v, n in service.prefix_cache.counts()}
        assert service.prefix_cache.held == ours["1"] + ours["2"]
        r = await c.post(
            "/admin/models/gru/unload", json={"version": 2, "grace_seconds": 0}, headers=as_admin
        )
        assert r.status_code == 200, r.text
        await service.registry.drained()
        ((_, version, kept),) = service.prefix_cache.counts()
        assert version == "1" and service.prefix_cache.held == ours["1"] == kept[3] > 0
        assert len(service.prefix_cache) == kept[4]
        assert lengths_right(service.prefix_cache)
        assert list(service.prefix_cache._lengths) == [("gru@1", "")]

    run_app(app, scenario)


def test_off_keeps_nothing(store):
    app = create_app(make_settings(store, PREFIX_CACHE_MB=0))

    async def scenario(c: Any) -> None:
        r = await c.post("/v1/next-word", json={"text": "one , two , three ,", "model": "gru"})
        assert r.status_code == 200
        assert len(app.state.service.prefix_cache) == 0
        assert "prefix_cache_hits_total{" not in (await c.get("/metrics")).text

    run_app(app, scenario)


def test_a_kept_state_is_the_uncached_paths(store):
    """The state kept after a prefix equals a fresh sequence's after the same ids: the start
    state (the implicit xxbos) included."""

    app = create_app(make_settings(store))

    async def scenario(c: Any) -> None:
        service = app.state.service
        for variant in VARIANTS:
            lm = service.model(variant)
            ids = lm.vocab.encode(" ".join(numbers(random.Random(7), 30)))
            await service.prefix_cache.step(lm, "", ids, 1)
            plan = service.prefix_cache.plan(lm, "", ids)
            assert plan.start == len(ids)
            seq = lm.engine.open()
            try:
                await seq.step(ids, 1)
                want = seq.state()
            finally:
                seq.close()
            got = plan.saved.unpack(lm.engine.spec)
            for name in want:
                torch.testing.assert_close(got[name], want[name].cpu(), atol=1e-6, rtol=0)

    run_app(app, scenario)


def test_a_vocabulary_past_256_tokens_keys_four_bytes_an_id():
    """Ids past 255 (a vocabulary of this size is not this data's, but a store may hold one)
    are keyed whole: a prefix is found again, and one that differs only past the low byte of
    an id is not taken for it."""
    vocab = Vocab(("xxunk", "xxpad", "xxbos", ",", *(f"w{i}" for i in range(300))))
    lm = SimpleNamespace(vocab=vocab, key="big@1", status="ready")
    cache = PrefixCache(1 << 20)
    saved = ExportedState("float32", "1", bytes(4))
    comma = vocab.stoi[","]
    ids = [vocab.stoi["w299"], vocab.stoi["w5"], comma]
    plan = cache.plan(lm, "", ids)  # type: ignore[arg-type]
    assert plan.start == 0 and [n for n, _ in plan.keep] == [3]  # the text's end, a ","
    cache.put(lm, plan.keep[0][1], saved)  # type: ignore[arg-type]
    longer = [*ids, vocab.stoi["w7"]]
    assert cache.plan(lm, "", longer).start == 3  # type: ignore[arg-type]
    twin = [ids[0] % 256, *longer[1:]]  # the same low byte
    assert twin[0] != ids[0] and cache.plan(lm, "", twin).start == 0  # type: ignore[arg-type]
