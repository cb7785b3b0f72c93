"""The engine's sequence handles: open, step, generate, export, restore, reset, close."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import torch

from app.engine.engine import Engine
from app.engine.params import SamplingParams
from app.engine.sequences import ExportedState, LayoutMismatch, SequenceClosed
from model_store import ModelConfig, Vocab, build_model
from model_store.vocab import SPECIAL_TOKENS
from tests.app.conftest import VARIANTS

WORDS = ("one", "two", "three", "thousand", "hundred", ",")
VOCAB = Vocab((*SPECIAL_TOKENS, *WORDS))
T = TypeVar("T")


def make_engine(variant: str, seed: int = 0, **kw: object) -> Engine:
    """An engine over a small untrained model (deterministic weights, eval mode)."""
    torch.manual_seed(seed)
    config = ModelConfig(variant, vocab_size=len(VOCAB), hidden=8, copy_window=4, key_size=4)
    model = build_model(config).eval()
    return Engine(model, VOCAB, torch.device("cpu"), name=variant, **kw)  # type: ignore[arg-type]


def run(engine: Engine, scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        engine.start()
        try:
            return await scenario()
        finally:
            await engine.stop()

    return asyncio.run(main())


def ids(text: str) -> list[int]:
    return VOCAB.encode(text)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_exported_state_opened_anew_continues_exactly_like_the_original(variant):
    """Export after a text (more than the copy window), open the bytes in a fresh handle of
    another engine of the same model: the two go on alike, steps and generations."""
    source, other = make_engine(variant), make_engine(variant)
    first, then = "one thousand two hundred three , one thousand", "two hundred three ,"

    async def original():
        seq = source.open()
        await seq.step(ids(first), 3)
        saved = seq.export()
        top = await seq.step(ids(then), len(VOCAB))
        gen = await seq.generate([], SamplingParams(max_words=6, feed_last=True))
        return saved, top, gen.words, seq.state()

    saved, top, words, state = run(source, original)
    layout = source.layout
    assert (saved.dtype, saved.shape) == layout
    stored = ExportedState(saved.dtype, saved.shape, bytes(bytearray(saved.data)))  # as Redis

    async def reopened():
        seq = other.open(stored)
        got = await seq.step(ids(then), len(VOCAB))
        gen = await seq.generate([], SamplingParams(max_words=6, feed_last=True))
        return got, gen.words, seq.state()

    got, got_words, got_state = run(other, reopened)
    assert [w for w, _ in got] == [w for w, _ in top]
    torch.testing.assert_close([p for _, p in got], [p for _, p in top], atol=1e-6, rtol=0)
    assert got_words == words
    same_state(got_state, state)


def test_the_layout_names_every_part_and_the_seed_format_is_kept():
    assert make_engine("gru").layout == ("float32", "1,8")
    assert make_engine("gru-copy").layout == (
        "parts",
        "h:float32:1,8;keys:float32:4,4;ids:int64:4;seen:bool:1",
    )


def test_a_state_that_does_not_fit_the_layout_is_refused_and_nothing_is_opened():
    plain, copy = make_engine("gru"), make_engine("gru-copy")
    foreign = plain.zero_export
    with pytest.raises(LayoutMismatch) as e:
        copy.open(foreign)
    assert e.value.problem == "a state of shape (1,8) float32"
    assert e.value.layout == copy.layout
    assert copy.open_sequences == 0

    good = copy.zero_export
    cut = ExportedState(good.dtype, good.shape, good.data[:-1])
    with pytest.raises(LayoutMismatch) as e:
        copy.open(cut)
    have, need = len(cut.data), len(good.data)
    assert e.value.problem == f"a damaged state ({have} bytes of state, the layout needs {need})"
    assert copy.open_sequences == 0

    seq = copy.open()
    state = seq.state()
    state["seen"] = torch.tensor([True])
    seq.restore(ExportedState.pack(state, copy.spec))
    before = seq.state()
    with pytest.raises(LayoutMismatch):
        seq.restore(foreign)
    same_state(seq.state(), before)  # a refused restore changes nothing


def test_a_closed_sequence_refuses_every_use_and_closing_again_does_nothing():
    engine = make_engine("gru")

    async def scenario():
        seq = engine.open()
        await seq.step(ids("one"), 1)
        seq.close()
        seq.close()
        assert seq.closed and engine.open_sequences == 0
        uses = {
            "step": lambda: seq.step(ids("one"), 1),
            "generate": lambda: seq.generate([], SamplingParams(max_words=1)),
        }
        for name, use in uses.items():
            with pytest.raises(SequenceClosed, match="a closed sequence of model 'gru' was used"):
                await use()
            assert name
        for use in (seq.export, seq.state, seq.reset, lambda: seq.restore(engine.zero_export)):
            with pytest.raises(SequenceClosed, match="open a new one"):
                use()

    run(engine, scenario)


def test_a_job_whose_sequence_closed_before_it_ran_fails_and_touches_no_row():
    engine = make_engine("gru")

    async def scenario():
        seq = engine.open()
        gen = seq.start(ids("one two three"), SamplingParams(max_words=3))  # queued, not run yet
        seq.close()
        heir = engine.open()  # takes the same row
        with pytest.raises(SequenceClosed, match="closed before its job ran"):
            await gen.wait()
        assert gen.done and isinstance(gen.error, SequenceClosed) and not gen.words
        return heir.export()

    assert run(engine, scenario) == engine.zero_export


@pytest.mark.parametrize("variant", ["gru", "gru-copy"])
def test_a_reused_row_starts_from_the_zero_state_in_a_batch_of_fresh_and_used_ones(variant):
    """Rows freed dirty are reset lazily, before the next forward: a sequence opened on one
    reads and exports the zero state at once, and steps from it in a batch that mixes it with
    never-used rows and with sequences that carry state."""
    engine = make_engine(variant)
    text, more = ids("one thousand two hundred three ,"), ids("two hundred")

    async def alone(feed: list[int]) -> tuple[list[tuple[int, float]], dict]:
        seq = engine.open()
        top = await seq.step(feed, len(VOCAB))
        state = seq.state()
        seq.close()
        return top, state

    async def scenario():
        want_fresh = await alone(more)
        used = engine.open()
        await used.step(text, 1)
        want_used = (await used.step(more, len(VOCAB)), used.state())
        await used.step([], 1)
        # dirty rows go back; their sequences' rows are taken again at once
        dirty = [engine.open() for _ in range(3)]
        for d in dirty:
            await d.step(text, 1)
            d.close()
        reopened = [engine.open() for _ in range(3)]
        for r in reopened:
            assert r.export() == engine.zero_export  # never stepped: the zero state
        never_used = engine.open()
        again = engine.open()
        await again.step(text, 1)
        results = await asyncio.gather(
            *(r.step(more, len(VOCAB)) for r in reopened),
            never_used.step(more, len(VOCAB)),
            again.step(more, len(VOCAB)),
        )
        states = [s.state() for s in (*reopened, never_used, again)]
        return want_fresh, want_used, results, states

    stats_before = engine.stats.batches
    want_fresh, want_used, results, states = run(engine, scenario)
    assert engine.stats.batches > stats_before
    for got, state in zip(results[:4], states[:4], strict=True):
        torch.testing.assert_close(got, want_fresh[0], atol=1e-6, rtol=0)
        same_state(state, want_fresh[1])
    torch.testing.assert_close(results[4], want_used[0], atol=1e-6, rtol=0)
    same_state(states[4], want_used[1])


def test_a_snapshot_restored_after_a_reset_survives_the_pending_reset():
    """The continuation's rewind: export, reset, restore, then step, before any forward
    runs the pending reset: the restored state is what steps."""
    engine = make_engine("gru-copy")

    async def scenario():
        seq, twin = engine.open(), engine.open()
        for s in (seq, twin):
            await s.step(ids("one thousand two ,"), 1)
        snapshot = seq.export()
        seq.reset()
        assert seq.export() == engine.zero_export
        seq.restore(snapshot)
        got = await seq.step(ids("one"), len(VOCAB))
        want = await twin.step(ids("one"), len(VOCAB))
        return got, want, seq.state(), twin.state()

    got, want, state, twin_state = run(engine, scenario)
    assert got == want
    same_state(state, twin_state)
