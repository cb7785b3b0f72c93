"""The service on a GPU: every variant's checkpoint, the engine, the saved states, training and
the app itself give on CUDA what they give on the CPU.

These need a CUDA device and are skipped (and reported so) where torch sees none, as in CI.
`scripts/gpu-check.sh` runs them on a GPU machine, with the rest of the suite on DEVICE cuda
(TEST_DEVICE=cuda); docs/benchmarks.md has the figures of its last run.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.engine.engine import Engine
from app.engine.generation import Generation
from app.engine.params import SamplingParams
from app.main import create_app
from model_store import find_checkpoint, load_checkpoint, save_checkpoint
from model_store.inference import resolve_device
from tests.app.conftest import VARIANTS, make_settings
from training.data import HumanNumbers
from training.loop import RECIPES, train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (scripts/gpu-check.sh runs these on one)"
)
CUDA = torch.device("cuda")
CPU = torch.device("cpu")
# float32 on both (the service turns TF32 off: model_store.resolve_device); cuDNN's GRU and the
# CPU's sum in other orders, so differences stay near float32's rounding.
ATOL = 2e-4


@pytest.fixture(autouse=True)
def as_the_service_sets_up_the_gpu() -> None:
    torch.backends.cudnn.allow_tf32 = True  # torch's default: resolve_device must undo it
    assert resolve_device("cuda") == CUDA
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def prefixes(data: HumanNumbers, n: int, seed: int) -> list[list[int]]:
    """`n` pieces of valid.txt, 1 to 40 words long, from random places."""
    rng = random.Random(seed)
    ids = data.ids("valid")
    out = []
    for _ in range(n):
        length = rng.randint(1, 40)
        at = rng.randrange(len(ids) - length)
        out.append(ids[at : at + length])
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_checkpoint_gives_the_same_log_probabilities_on_cuda(
    store: Path, data: HumanNumbers, variant: str
) -> None:
    """A checkpoint trained on the CPU, loaded on CUDA: over 64 streams of valid.txt, 64 words
    each, the same log-probabilities (within ATOL) and the same likeliest word everywhere but
    at near-ties."""
    ref = find_checkpoint(store, variant)
    on_cpu, on_cuda = load_checkpoint(ref, CPU), load_checkpoint(ref, CUDA)
    assert next(on_cuda.model.parameters()).device.type == "cuda"
    ids = torch.tensor(data.ids("valid")[: 64 * 64]).view(64, 64)
    ids[:, 0] = on_cpu.vocab.stoi["xxbos"]  # each row starts as the service starts a text
    with torch.no_grad():
        a, _ = on_cpu.model(ids)
        b, _ = on_cuda.model(ids.to(CUDA))
    a, b = torch.log_softmax(a.float(), -1), torch.log_softmax(b.float().cpu(), -1)
    assert torch.isfinite(b).all()
    assert (a - b).abs().max().item() < ATOL
    top2 = a.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > 10 * ATOL
    assert clear.float().mean() > 0.9
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])


async def _answers(
    engine: Engine, texts: list[list[int]]
) -> tuple[list[list[tuple[int, float]]], list[Generation]]:
    """Each text's five likeliest next words, fed in one batch, and a 12-word greedy
    continuation of each, all at once."""
    engine.start()
    try:
        tops = await asyncio.gather(*(engine.open().step(t, 5) for t in texts))
        params = SamplingParams(max_words=12, logprobs=2)
        gens = await asyncio.gather(*(engine.open().generate(t, params) for t in texts))
    finally:
        await engine.stop()
    return list(tops), list(gens)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_engine_on_cuda_answers_as_on_the_cpu(
    store: Path, data: HumanNumbers, variant: str
) -> None:
    """200 sequences batched through the engine's passes on each device: the same top words
    and greedy continuations, probabilities within ATOL (the engine's own pass on CUDA: gather,
    step, scatter, the masked softmax on the GPU)."""
    ref = find_checkpoint(store, variant)
    texts = prefixes(data, 200, seed=1)
    results = {}
    for device in (CPU, CUDA):
        ckpt = load_checkpoint(ref, device)
        engine = Engine(ckpt.model, ckpt.vocab, device, name=variant)
        results[device.type] = asyncio.run(_answers(engine, texts))
        assert engine.stats.rows / engine.stats.batches > 4  # they shared passes
    (cpu_tops, cpu_gens), (cuda_tops, cuda_gens) = results["cpu"], results["cuda"]
    near_ties = 0
    for want, got in zip(cpu_tops, cuda_tops, strict=True):
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=ATOL)
        if [w for w, _ in got] != [w for w, _ in want]:
            near_ties += 1  # two words within ATOL of each other swap places
    assert near_ties <= 2
    same = sum(a.words == b.words for a, b in zip(cpu_gens, cuda_gens, strict=True))
    assert same >= len(texts) - 2
    for a, b in zip(cpu_gens, cuda_gens, strict=True):
        if a.words == b.words:
            assert b.probs == pytest.approx(a.probs, abs=ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_state_saved_on_cuda_goes_on_on_the_cpu_and_back(
    store: Path, data: HumanNumbers, variant: str
) -> None:
    """A session's state exported by a GPU replica restores on a CPU replica (and the other
    way): the bytes do not name a device, and the next words are the same as if the state had
    stayed (replicas of mixed devices share Redis)."""
    ref = find_checkpoint(store, variant)
    first, then = prefixes(data, 2, seed=2)

    async def run() -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        cuda_ckpt, cpu_ckpt = load_checkpoint(ref, CUDA), load_checkpoint(ref, CPU)
        on_cuda = Engine(cuda_ckpt.model, cuda_ckpt.vocab, CUDA, name=variant)
        on_cpu = Engine(cpu_ckpt.model, cpu_ckpt.vocab, CPU, name=variant)
        on_cuda.start()
        on_cpu.start()
        try:
            stays = on_cuda.open()
            await stays.step(first, 1)
            moved = on_cpu.open()
            moved.restore(stays.export())
            back = on_cuda.open()
            back.restore(moved.export())
            assert back.export() == stays.export()  # the bytes survive the round trip
            return await stays.step(then, 5), await moved.step(then, 5)
        finally:
            await on_cuda.stop()
            await on_cpu.stop()

    stayed, moved = asyncio.run(run())
    assert [w for w, _ in moved] == [w for w, _ in stayed]
    assert [p for _, p in moved] == pytest.approx([p for _, p in stayed], abs=ATOL)


def test_training_on_cuda_gives_a_checkpoint_that_loads_anywhere(
    data: HumanNumbers, tmp_path: Path
) -> None:
    """Two epochs of gru-copy's own recipe on CUDA (its cursor batches, restarts, copy path):
    the loss falls, the weights are saved from the GPU and load on the CPU with the same
    answers."""
    config = replace(RECIPES["gru-copy"], epochs=2, device="cuda")
    result = train(config, data, progress=False, log=lambda _: None)
    assert next(result.model.parameters()).device.type == "cuda"
    first, last = result.metrics[0], result.metrics[-1]
    assert last["train_loss"] < first["train_loss"] or last["accuracy"] > 0.4
    assert last["accuracy"] > 0.3  # two epochs: well past chance (~1/30)
    save_checkpoint(tmp_path, "gru-copy", result.model, data.vocab, metrics=result.metrics)
    ckpt = load_checkpoint(find_checkpoint(tmp_path, "gru-copy"), CPU)
    ids = torch.tensor(data.ids("valid")[:256]).view(4, 64)
    with torch.no_grad():
        a, _ = ckpt.model(ids)
        b, _ = result.model.eval()(ids.to(CUDA))
    assert (torch.log_softmax(a, -1) - torch.log_softmax(b.cpu(), -1)).abs().max() < ATOL


def test_the_app_on_device_auto_runs_on_cuda_and_answers_as_the_cpu_one(store: Path) -> None:
    """DEVICE auto picks the GPU; through the API the answers are the CPU app's: next word,
    a session fed in pieces, a greedy continuation and an OpenAI completion with logprobs."""
    assert resolve_device("auto").type == "cuda"
    requests = [
        ("/v1/next-word", {"model": "gru-copy", "text": "one , two , three , four ,", "top_k": 3}),
        ("/v1/next-word", {"model": "gru", "text": "eight thousand one hundred two ,"}),
        ("/v1/continuation", {"model": "gru-copy", "text": "twenty one ,", "max_words": 8}),
        (
            "/v1/completions",
            {
                "model": "gru-copy",
                "prompt": "twenty one ,",
                "max_tokens": 8,
                "temperature": 0,
                "logprobs": 2,
            },
        ),
    ]
    answers = {}
    for device in ("cpu", "auto"):
        with TestClient(create_app(make_settings(store, DEVICE=device))) as client:
            registry = client.app.state.service.registry  # type: ignore[attr-defined]
            assert registry.resolve("gru-copy").engine.device.type == (
                "cuda" if device == "auto" else "cpu"
            )
            got = []
            for path, body in requests:
                r = client.post(path, json=body)
                assert r.status_code == 200, r.text
                got.append(r.json())
            r = client.post("/v1/sessions", json={"model": "gru-copy", "text": "one , two ,"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            r = client.post(f"/v1/sessions/{sid}/next-word", json={"text": "three , four ,"})
            assert r.status_code == 200, r.text
            got.append(r.json())
            answers[device] = got
    for a, b in zip(answers["cpu"], answers["auto"], strict=True):
        assert _words(a) == _words(b)
        assert _numbers(b) == pytest.approx(_numbers(a), abs=ATOL)


VARYING = re.compile(r"\d{4}-\d\d-\d\dT|^(cmpl|sess|req)-")  # times and ids: each run's own


def _words(answer: object) -> list[str]:
    """Every string in an answer but ids and times (which differ between two runs)."""
    if isinstance(answer, dict):
        return [w for k, v in sorted(answer.items()) if not k.endswith("id") for w in _words(v)]
    if isinstance(answer, list):
        return [w for v in answer for w in _words(v)]
    return [answer] if isinstance(answer, str) and not VARYING.search(answer) else []


def _numbers(answer: object) -> list[float]:
    """Every number in an answer but times."""
    if isinstance(answer, dict):
        return [n for k, v in sorted(answer.items()) if k != "created" for n in _numbers(v)]
    if isinstance(answer, list):
        return [n for v in answer for n in _numbers(v)]
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        return []
    return [float(answer)]
