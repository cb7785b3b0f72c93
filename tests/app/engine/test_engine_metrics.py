"""What the engine tells the metrics: its jobs running and waiting, each job's time to first
word and each generation's times between words (vLLM's num_requests_running,
num_requests_waiting, time_to_first_token_seconds, inter_token_latency_seconds)."""

import asyncio

from app.engine.params import SamplingParams
from tests.app.engine.test_sequences import ids, make_engine

Pass = tuple[int, int, int, list[float], list[float]]


def watched(variant: str = "gru") -> tuple[object, list[Pass]]:
    engine = make_engine(variant)
    passes: list[Pass] = []
    engine.observe(lambda *told: passes.append(told))  # type: ignore[arg-type]
    return engine, passes


def firsts(passes: list[Pass]) -> list[float]:
    return [s for p in passes for s in p[3]]


def gaps(passes: list[Pass]) -> list[float]:
    return [s for p in passes for s in p[4]]


def test_jobs_wait_until_a_pass_takes_them_and_their_first_word_counts_from_the_queue():
    engine, passes = watched()

    async def main():
        seqs = [engine.open() for _ in range(3)]
        steps = [asyncio.create_task(s.step(ids("one , two"), 2)) for s in seqs]
        await asyncio.sleep(0)  # queued; the engine's loop is not running: held
        held = engine.jobs()
        await asyncio.sleep(0.05)
        engine.start()
        await asyncio.gather(*steps)
        after = engine.jobs()
        await engine.stop()
        return held, after

    held, after = asyncio.run(main())
    assert held == (0, 3)  # three waiting, none running
    assert after == (0, 0)
    assert len(firsts(passes)) == 3 and gaps(passes) == []
    assert all(s >= 0.05 for s in firsts(passes))  # the wait in the queue counts


def test_a_generation_runs_between_its_words_and_counts_words_minus_one_gaps():
    engine, passes = watched()

    async def main():
        engine.start()
        seq = engine.open()
        gen = seq.start(ids("one ,"), SamplingParams(max_words=5))
        seen = set()
        while not gen.done:
            seen.add(engine.jobs())
            await asyncio.sleep(0)
        await engine.stop()
        return seen, gen

    seen, gen = asyncio.run(main())
    assert len(gen.words) == 5 and gen.finish == "length"
    assert (1, 0) in seen  # between its words: running, not waiting
    assert (0, 1) in seen  # queued before the first pass
    assert len(firsts(passes)) == 1
    assert len(gaps(passes)) == 4  # words - 1
    assert all(s >= 0 for s in gaps(passes))


def test_a_stop_word_is_a_word_and_a_prompts_scored_words_are_not():
    """A stop ends a generation in the pass that chose it: that pass is its last word's
    time. Words given and scored (a completion's echo with logprobs) come before its first
    generated word, as a prompt does."""
    engine, passes = watched()

    async def main():
        engine.start()
        seq = engine.open()
        first = await seq.generate(ids("one ,"), SamplingParams(max_words=3))
        stopped = await engine.open().generate(
            ids("one ,"), SamplingParams(max_words=3, stop=frozenset({first.words[0]}))
        )
        counts = len(firsts(passes)), len(gaps(passes))
        scored = await engine.open().generate(
            ids("one"), SamplingParams(max_words=2, forced=tuple(ids(", two ,")))
        )
        await engine.stop()
        return stopped, counts, scored

    stopped, counts, scored = asyncio.run(main())
    assert stopped.words == [] and stopped.finish == "stop"
    assert counts == (2, 2)  # the first generation's 1 + 2; the stopped one's first word only
    assert len(scored.words) == 3 + 2  # three scored, two generated
    assert (len(firsts(passes)), len(gaps(passes))) == (3, 3)  # 1 + 1 more, not 5 and 4
    assert sum(p[2] for p in passes) == 3 + 0 + 2  # words generated: the scored ones are not


def test_a_cancelled_callers_job_is_neither_running_nor_waiting():
    engine, _ = watched()

    async def main():
        step = asyncio.create_task(engine.open().step(ids("one"), 1))
        await asyncio.sleep(0)
        queued = engine.jobs()
        step.cancel()
        await asyncio.sleep(0)
        return queued, engine.jobs()

    assert asyncio.run(main()) == ((0, 1), (0, 0))
