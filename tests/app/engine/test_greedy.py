"""Greedy rows are picked by one argmax over the batch (app.engine.batcher.StepBatcher._rows):
the same words and the very same probabilities as Python's max over each row's list, in a
batch that mixes greedy, sampled and row-needing generations."""

import asyncio
import random
from dataclasses import dataclass

import torch

from app.engine.batcher import Generation, StepBatcher
from model_store import ModelConfig, Vocab, build_model


@dataclass(slots=True)
class RowGreedy(Generation):
    """Greedy through `choose` on the whole row (the path every generation took before)."""

    def greedy(self) -> bool:
        return False


def test_argmax_over_the_batch_equals_max_over_each_row():
    torch.manual_seed(0)
    itos = tuple(["xxunk", "xxpad", "xxbos", *"abcdefghijklmnop"] + ["xxfake"] * 5)
    vocab = Vocab(itos)
    model = build_model(ModelConfig(variant="gru", vocab_size=len(itos), hidden=16)).eval()
    texts = [[3 + (i * 7 + j) % 16 for j in range(1 + i % 5)] for i in range(24)]

    async def run() -> list[Generation]:
        batcher = StepBatcher(model, vocab, torch.device("cpu"))
        batcher.start()
        gens: list[Generation] = []
        jobs = []
        for i, ids in enumerate(texts):
            for kind in (Generation, RowGreedy):
                gen = kind(max_words=12)
                gens.append(gen)
                jobs.append(batcher.open().generate(ids, gen))
            sampled = Generation(max_words=12, temperature=0.8, rng=random.Random(i))
            jobs.append(batcher.open().generate(ids, sampled))
        await asyncio.gather(*jobs)
        await batcher.stop()
        assert batcher.stats.rows / batcher.stats.batches > 10  # they did share batches
        return gens

    gens = asyncio.run(run())
    for fast, slow in zip(gens[::2], gens[1::2], strict=True):
        assert fast.greedy() and not slow.greedy()
        assert fast.words == slow.words and len(fast.words) == 12
        assert fast.probs == slow.probs  # exactly: the same float32, the same conversion
