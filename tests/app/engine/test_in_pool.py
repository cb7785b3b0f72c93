"""The model's own pass in the pool (gru-copy's C step, `Engine._forward_in_pool`): a batch of
steps that each feed one id is answered in place, with the same words and probabilities (to
float rounding) and the same states as the engine's gather-advance-head-scatter pass, new
sequences (pending rows) included; an id out of the vocabulary fails its job alone and changes
no state; anything else (a generation, a longer text) takes the gather pass."""

import asyncio
import itertools

import pytest
import torch

from app.engine.engine import Engine
from app.engine.params import SamplingParams
from app.engine.sequences import ExportedState
from model_store import ModelConfig, Vocab, build_model
from model_store.copy_step import TABLED_ROWS
from model_store.vocab import SPECIAL_TOKENS

WORDS = ("one", "two", "three", "four", "thousand", "hundred", ",")
VOCAB = Vocab((*SPECIAL_TOKENS, *WORDS))


def make_engine(kernel: bool, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    config = ModelConfig(
        "gru-copy", vocab_size=len(VOCAB), hidden=24, copy_window=6, key_size=8,
        copy_value=True, copy_lookahead=True,
    )  # fmt: skip
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.kernel_step = kernel  # type: ignore[assignment]
    return Engine(model, VOCAB, torch.device("cpu"), name="gru-copy")


class Counting:
    """Counts the engine's passes, and those done in the pool."""

    def __init__(self, engine: Engine):
        self.in_pool = self.passes = 0
        inner, forward = engine._forward_in_pool, engine._forward

        def in_pool(batch):  # type: ignore[no-untyped-def]
            rows = inner(batch)
            if rows is not None:
                self.in_pool += 1
            return rows

        def counted(batch):  # type: ignore[no-untyped-def]
            self.passes += 1
            return forward(batch)

        engine._forward_in_pool = in_pool  # type: ignore[method-assign]
        engine._forward = counted  # type: ignore[method-assign]


def scenario(engine: Engine, texts: list[str], words: list[str]):  # type: ignore[no-untyped-def]
    """Open a sequence per text (an empty text: a new one, its row pending), feed it, then step
    every sequence at once by its word (one pass: they are queued in one turn of the loop)."""

    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            seqs = [engine.open() for _ in texts]
            for seq, text in zip(seqs, texts, strict=True):
                if text:
                    await seq.step(VOCAB.encode(text), 1)
            tops = await asyncio.gather(
                *(
                    seq.step(VOCAB.encode(word), len(VOCAB))
                    for seq, word in zip(seqs, words, strict=True)
                )
            )
            return tops, [seq.state() for seq in seqs]
        finally:
            await engine.stop()

    return asyncio.run(main())


TEXTS = ["", "one , two ,", "one thousand two hundred three , one thousand two", "three", ""]


@pytest.mark.parametrize("rows", [1, len(TEXTS), TABLED_ROWS - 1])
def test_a_pass_in_the_pool_answers_as_the_gather_pass(rows: int) -> None:
    texts = (TEXTS * rows)[:rows]
    words = (["one", "three", ",", "four", "thousand", "hundred"] * rows)[:rows]
    c_engine, gather_engine = make_engine(True), make_engine(False)
    counts = Counting(c_engine)
    tops, states = scenario(c_engine, texts, words)
    want_tops, want_states = scenario(gather_engine, texts, words)
    assert counts.in_pool >= 1  # the last pass at least: all one-word steps
    for got, want in zip(tops, want_tops, strict=True):
        assert [w for w, _ in got] == [w for w, _ in want] or _tied(want)
        assert len(got) == len(want)
        for (_, p), (_, q) in zip(got, want, strict=True):
            assert p == pytest.approx(q, rel=1e-5, abs=1e-7)
    for got, want in zip(states, want_states, strict=True):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def _tied(top: list[tuple[int, float]]) -> bool:
    """Two probabilities within rounding of each other: their order may differ."""
    ps = [p for _, p in top]
    return any(abs(a - b) <= 1e-6 * max(a, b) for a, b in itertools.pairwise(ps))


def test_a_bad_id_fails_its_job_alone_and_changes_no_state() -> None:
    """An id past the vocabulary in a batch: the C step refuses the batch before writing any
    row, the engine runs each job alone, and only that job fails; every other sequence is
    stepped once (its state the same as a batch without the bad job gives)."""
    engine = make_engine(True)
    reference = make_engine(True)
    bad = len(VOCAB) + 3

    async def main(e: Engine, with_bad: bool):  # type: ignore[no-untyped-def]
        e.start()
        try:
            seqs = [e.open() for _ in range(4)]
            for seq in seqs:
                await seq.step(VOCAB.encode("one , two ,"), 1)
            before = seqs[3].state()
            steps = [seq.step(VOCAB.encode("three"), 3) for seq in seqs[:3]]
            if with_bad:
                steps.append(seqs[3].step([bad], 3))
            got = await asyncio.gather(*steps, return_exceptions=True)
            return got, [seq.state() for seq in seqs], before
        finally:
            await e.stop()

    got, states, before = asyncio.run(main(engine, True))
    want, want_states, _ = asyncio.run(main(reference, False))
    assert isinstance(got[3], Exception) and "not in a vocabulary" in str(got[3])
    assert got[:3] == want[:3]
    for state, want_state in zip(states[:3], want_states[:3], strict=True):
        for name in state:
            assert torch.equal(state[name], want_state[name]), name
    for name in before:  # the bad job's sequence is where it was
        assert torch.equal(states[3][name], before[name]), name


def test_generations_and_longer_texts_take_the_gather_pass() -> None:
    engine = make_engine(True)
    counts = Counting(engine)

    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            seq = engine.open()
            await seq.step(VOCAB.encode("one , two ,"), 2)  # three ids: gathered
            await seq.generate([], SamplingParams(max_words=3, feed_last=True))  # generations
            restored = engine.open(ExportedState.pack(seq.state(), engine.spec))
            await restored.step(VOCAB.encode("three"), 2)  # one id: in the pool
        finally:
            await engine.stop()

    asyncio.run(main())
    assert counts.in_pool == 1
    assert counts.passes >= 5  # the text, four generation passes at least, the restored step


def test_a_state_answers_the_same_bits_whichever_pass_computes_it() -> None:
    """A text's last word fed in the pool pass, then the state it left opened anew and asked
    again with nothing to feed (the gather pass: head only): the same words and the same
    probabilities to the bit (one softmax for both, model_store.next_probs)."""
    engine = make_engine(True)
    counts = Counting(engine)
    text = "one thousand two hundred three , one thousand two"

    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            a = engine.open()
            words = VOCAB.encode(text)
            await a.step(words[:-1], 1)
            in_pool = await a.step(words[-1:], len(VOCAB))
            b = engine.open(a.export())
            gathered = await b.step([], len(VOCAB))
            return in_pool, gathered
        finally:
            await engine.stop()

    in_pool, gathered = asyncio.run(main())
    assert counts.in_pool == 1
    assert in_pool == gathered
