"""Greedy rows are picked by one argmax over the batch (app.engine.engine.Engine._rows): the
same words and the very same probabilities as Python's max over each row's list, in a batch
that mixes plain greedy, sampled and row-needing generations (greedy with logprobs: the
engine makes a list of their rows)."""

import asyncio
import random

import torch

from app.engine.engine import Engine, top_rows
from app.engine.generation import Generation
from app.engine.params import SamplingParams
from app.engine.sampling import top_words
from model_store import ModelConfig, Vocab, build_model


def test_argmax_over_the_batch_equals_max_over_each_row():
    torch.manual_seed(0)
    itos = tuple(["xxunk", "xxpad", "xxbos", *"abcdefghijklmnop"] + ["xxfake"] * 5)
    vocab = Vocab(itos)
    model = build_model(ModelConfig(variant="gru", vocab_size=len(itos), hidden=16)).eval()
    texts = [[3 + (i * 7 + j) % 16 for j in range(1 + i % 5)] for i in range(24)]
    plain, with_row = SamplingParams(max_words=12), SamplingParams(max_words=12, logprobs=0)

    async def run() -> list[Generation]:
        engine = Engine(model, vocab, torch.device("cpu"))
        engine.start()
        jobs = []
        for i, ids in enumerate(texts):
            for params in (plain, with_row):
                jobs.append(engine.open().generate(ids, params))
            sampled = SamplingParams(max_words=12, temperature=0.8, rng=random.Random(i))
            jobs.append(engine.open().generate(ids, sampled))
        gens = await asyncio.gather(*jobs)
        await engine.stop()
        assert engine.stats.rows / engine.stats.batches > 10  # they did share batches
        return [g for i, g in enumerate(gens) if i % 3 != 2]

    gens = asyncio.run(run())
    for fast, slow in zip(gens[::2], gens[1::2], strict=True):
        assert fast.greedy() and not slow.greedy()
        assert fast.words == slow.words and len(fast.words) == 12
        assert fast.probs == slow.probs  # exactly: the same float32, the same conversion
        assert slow.tops == [[]] * 12  # logprobs 0: the row was listed, no top word kept


def test_a_steps_top_words_from_one_sort_equal_pythons_sort_of_each_row():
    """Steps' top words are one sort over the batch (app.engine.engine.top_rows): the same
    words, order (a tie goes to the higher id) and floats as sampling.top_words of the row's
    list, impossible words left out, for any k and any subset of rows."""
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):
        b, v = rng.randint(1, 70), rng.randint(2, 45)
        probs = torch.softmax(torch.randn(b, v, generator=gen) * rng.choice([0.01, 1, 5]), -1)
        if rng.random() < 0.5:
            probs[:, rng.randrange(v)] = 0  # a banned word
        if rng.random() < 0.3:
            probs[:, 1] = probs[:, 0]  # exact ties
        rows = sorted(rng.sample(range(b), rng.randint(1, b)))
        ks = [rng.randint(1, v) for _ in rows]
        full = probs.tolist()
        want = [top_words(full[r], k) for r, k in zip(rows, ks, strict=True)]
        assert top_rows(probs, rows, ks) == want
