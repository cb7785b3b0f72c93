"""The service on a GPU against the same machine's CPU, side by side in one run.

    python -m benchmarks.gpu --store STORE [--duration 5] [--rounds 3] [--parts step,engine,http]

Needs a CUDA device (scripts/gpu-check.sh runs it on the GPU machine); the http part needs
`wrk`. STORE needs gru and gru-copy (`python -m training train-all`). Prints:

- step: one serving step of gru and gru-copy for B sessions that each feed a word
  (benchmarks.step's `stepper`: advance_state, the head, a softmax) on the CPU with one torch
  thread (the server's TORCH_THREADS default) and on CUDA (synchronized), for B from 1 to
  16,384: ms a step and rows a millisecond, rounds alternating the devices; for B 1 to 1,024
  also the CUDA step captured once as a CUDA graph (torch.cuda.graphs: a bucket's graph over
  its static inputs and state, warmed up on a side stream first), ms a replay, and the largest
  |difference| between a replay's probabilities and the eager step's (gru-copy's CUDA step is
  its TorchScript forms, exact below 24 rows and tabled from 24: the C step serves the CPU
  alone);
- engine: the engine in process, N sequences each generating 32 greedy words at once (every
  word a pass over all of them), words/s on each device;
- http: two servers up at once on one store (DEVICE cpu and DEVICE cuda, default model
  gru-copy), driven in turn by wrk, `--rounds` rounds: session next-word at 64 connections and
  at one, /v1/completions with lists of 256 prompts (4 connections), and continuations of
  100 words on 256 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from app.engine.engine import Engine, EngineConfig
from app.engine.params import SamplingParams
from benchmarks.serving import (
    Server,
    create_sessions,
    lua_post,
    lua_sessions,
    prompt_list,
    wrk,
)
from benchmarks.step import stepper
from model_store import Checkpoint, find_checkpoint, load_checkpoint

MODELS = ("gru", "gru-copy")
ROWS = (1, 64, 256, 1024, 4096, 16384)
GRAPH_ROWS = (1, 64, 256, 1024)  # the CUDA step also captured as a CUDA graph
SEQUENCES = (64, 1024, 8192)
CPU = torch.device("cpu")
GPU = torch.device("cuda")  # --gpu cpu: a dry run of this script where there is no GPU


def timed(step: Callable[[], object], device: torch.device, seconds: float = 0.25) -> float:
    """Milliseconds a step: repeated for about `seconds`, the GPU's queue drained at both ends."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        step()
        sync()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                step()
            n += 10
            sync()
        return (time.perf_counter() - start) / n * 1e3


def captured(step: Callable[[], Tensor]) -> tuple[Callable[[], None], float] | str:
    """`step` (on GPU) captured once as a CUDA graph: its replay, and the largest |difference|
    between a replay's output and an eager step's; or why there is none. Its inputs and state
    are the step's own tensors, static: a replay reads them where they are, as a serving graph
    of a batch bucket would read the rows copied into them."""
    if GPU.type != "cuda":
        return f"not on a CPU (--gpu {GPU.type}: a CUDA graph needs a CUDA device)"
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.inference_mode():
            # warmed up on a side stream, as torch's docs ask: lazy setup, TorchScript's
            # profiling runs and its specializations to these shapes happen before the
            # capture, which takes the same stream (cuBLAS and cuDNN keep a workspace a stream)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(11):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph, stream=side):
                out = step()
            eager = step()
            graph.replay()
            diff = float((out - eager).abs().max())
    except RuntimeError as e:  # an op that waits on the CPU (.item()) or that no graph holds
        return f"not captured: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return graph.replay, diff


def step_table(store: Path, rounds: int) -> None:
    print("\nstep: one serving step of B sessions (ms a step, median of rounds; rows/ms)")
    sides = (("cpu", CPU), ("gpu", GPU))
    for name in MODELS:
        ref = find_checkpoint(store, name)
        for rows in ROWS:
            steps = {k: stepper(load_checkpoint(ref, d).model, rows, False, d)[0] for k, d in sides}
            graph = captured(steps["gpu"]) if rows in GRAPH_ROWS else None
            ms: dict[str, list[float]] = {k: [] for k in ("cpu", "gpu", "graph")}
            for _ in range(rounds):
                for k, device in sides:
                    ms[k].append(timed(steps[k], device))
                if isinstance(graph, tuple):
                    ms["graph"].append(timed(graph[0], GPU))
            cpu, gpu = statistics.median(ms["cpu"]), statistics.median(ms["gpu"])
            print(
                f"  {name:<9} B={rows:>6}: cpu {cpu:8.3f} ms ({rows / cpu:9.0f} rows/ms), "
                f"{GPU.type} {gpu:7.3f} ms ({rows / gpu:9.0f} rows/ms): {cpu / gpu:6.2f}x",
                flush=True,
            )
            if isinstance(graph, str):
                print(f"  {'':<9} {'':>8}  as a CUDA graph: {graph}", flush=True)
            elif graph is not None:
                replay = statistics.median(ms["graph"])
                print(
                    f"  {'':<9} {'':>8}  as a CUDA graph: {replay:7.4f} ms a replay "
                    f"({rows / replay:9.0f} rows/ms): {gpu / replay:6.2f}x the eager {GPU.type} "
                    f"step, {cpu / replay:6.2f}x the cpu's; max |replay - eager| {graph[1]:.1e}",
                    flush=True,
                )
            del graph


def engine_table(store: Path) -> None:
    print(
        "\nengine: N sequences each generating 32 greedy words at once, in process (words/s), "
        "at MAX_BATCH_SIZE 256 (the default) and 8192"
    )
    texts = ["one thousand two hundred five ,", "seven ,", "nine thousand nine hundred ninety ,"]
    for name in MODELS:
        ref = find_checkpoint(store, name)
        for n in SEQUENCES:
            for max_batch in (256, 8192):
                if max_batch > n and max_batch != 256:
                    continue
                rate = {}
                for k, device in (("cpu", CPU), ("gpu", GPU)):
                    ckpt = load_checkpoint(ref, device)
                    ids = [[ckpt.vocab.stoi[w] for w in texts[i % 3].split()] for i in range(n)]
                    config = EngineConfig(max_batch=max_batch, max_queue=max(4096, n))
                    rate[k] = asyncio.run(generate(ckpt, device, config, ids))
                print(
                    f"  {name:<9} N={n:>5} max_batch {max_batch:>4}: cpu {rate['cpu']:9.0f}, "
                    f"{GPU.type} {rate['gpu']:9.0f} words/s: {rate['gpu'] / rate['cpu']:.2f}x",
                    flush=True,
                )


async def generate(
    ckpt: Checkpoint, device: torch.device, config: EngineConfig, ids: list[list[int]]
) -> float:
    engine = Engine(ckpt.model, ckpt.vocab, device, config, name="bench")
    engine.start()
    try:
        params = SamplingParams(max_words=32)
        await asyncio.gather(*(engine.open().generate(t, params) for t in ids[:64]))  # warm
        start = time.perf_counter()
        gens = await asyncio.gather(*(engine.open().generate(t, params) for t in ids))
        took = time.perf_counter() - start
    finally:
        await engine.stop()
    return sum(len(g.words) for g in gens) / took


def http_table(store: Path, args: argparse.Namespace, tmp: Path) -> None:
    prompts = prompt_list()
    batch = lua_post(
        tmp,
        "batch",
        "/v1/completions",
        {"model": "gru-copy", "prompt": prompts, "max_tokens": 1, "temperature": 0},
    )
    cont = lua_post(
        tmp, "cont", "/v1/continuation", {"text": "one thousand one ,", "max_words": 100}
    )
    loads = (
        ("session next-word", 64, None, 1),
        ("session next-word, one client", 1, None, 1),
        ("completions, 256 prompts", 4, batch, len(prompts)),
        ("continuation, 100 words", 256, cont, 100),
    )
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        targets = []
        for device in ("cpu", GPU.type):
            srv = stack.enter_context(Server(store, DEVICE=device, DEFAULT_MODEL="gru-copy"))
            ids = asyncio.run(create_sessions(srv.base, 1000))
            script = lua_sessions(ids, tmp / str(len(targets)))
            wrk(srv.base, 16, 1, script)  # warm-up
            wrk(srv.base, 4, 1, batch)
            targets.append(("cpu" if not targets else "gpu", srv, script))
        for i in range(args.rounds):
            for load, conns, body, per in loads:
                for device, srv, script in targets:
                    cpu = srv.cpu_s()
                    r = wrk(srv.base, conns, args.duration, body or script)
                    r["cpu_s"] = srv.cpu_s() - cpu
                    runs.setdefault((load, device), []).append(r)
                c, g = runs[(load, "cpu")][-1]["rps"], runs[(load, "gpu")][-1]["rps"]
                print(f"  round {i + 1}, {load}: cpu {c * per:.0f}, gpu {g * per:.0f}", flush=True)
    print(
        f"\nhttp: DEVICE cpu and DEVICE {GPU.type} servers, gru-copy, {args.rounds} rounds of "
        f"{args.duration:g} s in turn (medians; words or predictions /s where a request has many)"
    )
    for load, conns, _, per in loads:
        med = {
            d: {k: statistics.median(r[k] for r in runs[(load, d)]) for k in ("rps", "p50", "p99")}
            for d in ("cpu", "gpu")
        }
        cpu_ms = {
            d: 1e3
            * sum(r["cpu_s"] for r in runs[(load, d)])
            / sum(r["requests"] for r in runs[(load, d)])
            for d in ("cpu", "gpu")
        }
        errors = sum(r["errors"] for d in ("cpu", "gpu") for r in runs[(load, d)])
        print(
            f"  {load:<30} {conns:>3} conns: cpu {med['cpu']['rps'] * per:>9.0f} "
            f"(p50 {med['cpu']['p50']:.2f} p99 {med['cpu']['p99']:.1f} ms, "
            f"{cpu_ms['cpu']:.3f} CPU-ms/req), {GPU.type} {med['gpu']['rps'] * per:>9.0f} "
            f"(p50 {med['gpu']['p50']:.2f} p99 {med['gpu']['p99']:.1f} ms, "
            f"{cpu_ms['gpu']:.3f} CPU-ms/req): {med['gpu']['rps'] / med['cpu']['rps']:.2f}x"
            + (f"  ({errors} non-2xx)" if errors else "")
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, required=True, help="a store with gru and gru-copy")
    p.add_argument("--duration", type=float, default=5, help="seconds a wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="step,engine,http")
    p.add_argument(
        "--gpu", default="cuda", help="the device set against the CPU (cpu: a dry run, no GPU)"
    )
    args = p.parse_args()
    global GPU
    GPU = torch.device(args.gpu)
    if GPU.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA device (or --gpu cpu for a dry run)")
    torch.set_num_threads(1)  # the server's TORCH_THREADS default, for the CPU's side
    on = f"{os.cpu_count()} cores"
    if GPU.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        on += f", {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
        on += f", cuDNN {torch.backends.cudnn.version()}"
    print(f"machine: {platform.machine()}, {on}; torch {torch.__version__}")
    parts = set(args.parts.split(","))
    if "step" in parts:
        step_table(args.store, args.rounds)
    if "engine" in parts:
        engine_table(args.store)
    if "http" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            http_table(args.store, args, Path(tmp))


if __name__ == "__main__":
    main()
