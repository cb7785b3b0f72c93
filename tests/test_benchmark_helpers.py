"""The pure helpers of benchmarks.servers and benchmarks.torchserve (no server runs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from benchmarks.servers import row, summary, tree_cpu_s
from benchmarks.torchserve import with_ports


def run(rps: float, p50: float = 1.0, p99: float = 2.0, **more: float) -> dict[str, float]:
    return {"rps": rps, "p50": p50, "p99": p99, "errors": 0, **more}


def test_summary_takes_medians_and_per_round_ratios() -> None:
    ours = [run(300, 1, 9, cpu_ms=0.5), run(100, 3, 7, cpu_ms=0.7), run(200, 2, 8, cpu_ms=0.6)]
    ref = [run(100), run(100), run(400)]
    s = summary(ours, ref)
    assert (s["rps"], s["p50"], s["p99"], s["cpu_ms"]) == (200, 2, 8, 0.6)
    assert s["ratios"] == [3.0, 1.0, 0.5]
    assert s["ratio"] == 1.0  # the median of the rounds' ratios, not the ratio of medians
    assert "cpu_ms" not in summary([run(1), run(2, cpu_ms=1)])  # only when every round has it


def test_row_shows_the_ratio_as_a_factor_or_a_percentage() -> None:
    s = summary([run(50), run(60)], [run(100), run(100)])
    assert "0.55x of ref (rounds: 0.50 0.60)" in row("x", s, "ref")
    assert "55% of bare" in row("x", s, "bare", percent=True)
    assert "non-2xx" not in row("x", s)


def test_with_ports_moves_each_address_and_nothing_else() -> None:
    props = (
        "inference_address=http://127.0.0.1:8080\n"
        "management_address=http://127.0.0.1:8081\n"
        "metrics_address=http://127.0.0.1:8082\n"
        "default_workers_per_model=1\n"
    )
    out = with_ports(props, {"inference": 1, "management": 2, "metrics": 3})
    assert out == (
        "inference_address=http://127.0.0.1:1\n"
        "management_address=http://127.0.0.1:2\n"
        "metrics_address=http://127.0.0.1:3\n"
        "default_workers_per_model=1\n"
    )


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
TREE = (
    "import subprocess, sys, time\n"
    + BURN
    + "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE)\n"
    "child.stdout.readline()\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_tree_cpu_s_counts_a_process_and_its_children() -> None:
    """A process that burns 0.3 s of CPU and starts a child that burns 0.3 s more: the tree
    counts both, the child alone counts its own (each plus Python's start-up)."""
    child_code = BURN + "print(flush=True)\ntime.sleep(60)\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", TREE, child_code], stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        whole, alone = tree_cpu_s(parent.pid), tree_cpu_s(child)
        assert 0.3 <= alone < 0.6
        assert 0.3 <= whole - alone < 0.6
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
