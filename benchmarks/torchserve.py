"""TorchServe beside our server, on one machine, driven in turn (issue 19):

    python -m benchmarks.torchserve                   # trains gru-copy and gru into a temp store
    python -m benchmarks.torchserve --store DIR --duration 6 --rounds 3 --ts-venv /tmp/ts-venv

TorchServe is the peer of /work/shared/peers/torchserve (`--peer`; its README says what it
serves): its handler (a random-weight GRU of our models' size, one hidden state per sequence),
its model-config.yaml (1 worker, batchSize 128, maxBatchDelay 2 ms, sequence batching), its
config.properties with free loopback ports, and its wrk script: POST /predictions/gru over 100
pre-created sequences, 1 to 5 words a request. The peer folder is read only: the archive, logs
and pid file go to a temp folder. The venv (`--ts-venv`, default /tmp/ts-venv) is made when it
has no `torchserve`: `python -m venv`, then `pip install torch==2.13.0 torchserve==0.12.0
torch-model-archiver==0.12.0 pyyaml numpy` (torch pinned: never another one). Needs Java 11+
and `wrk`.

Ours: `python -m app` as deployed: API keys on (requests carry `Authorization: Bearer`),
access log and metrics on, gru-copy the default model; POST /v1/sessions/{id}/next-word over
100 sessions of gru-copy and 100 of gru, one word a request.

Both servers are up at once; every load runs on each in turn, `--rounds` times, so a load from
elsewhere on the machine falls on both alike. Prints at 64 and at 1 connection the medians over
the rounds of requests/s, p50 and p99, each server's CPU milliseconds per request (TorchServe:
the JVM and its Python worker together), and ours/TorchServe per round and its median.
`--granian-too`: ours with SERVER=granian (gru-copy) too, up beside the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.servers import BENCH_KEY, DEPLOYED, Case, in_turn, row, summary, tree_cpu_s
from benchmarks.serving import Server, create_sessions, lua_sessions, train_store
from launchers import HOST, free_port

PEER = Path("/work/shared/peers/torchserve")
PACKAGES = [
    "torch==2.13.0",
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "pyyaml",
    "numpy",
]
SEQUENCES = 100


def ensure_venv(venv: Path) -> None:
    """The TorchServe venv, made when it has no `torchserve` (torch pinned)."""
    if (venv / "bin" / "torchserve").exists():
        return
    print(f"making the TorchServe venv in {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)


def with_ports(properties: str, ports: dict[str, int]) -> str:
    """The peer's config.properties with each of inference/management/metrics_address on
    the given loopback port."""
    for name, port in ports.items():
        properties = re.sub(
            rf"^{name}_address=.*$", f"{name}_address=http://{HOST}:{port}", properties, flags=re.M
        )
    return properties


class TorchServe:
    """The peer's TorchServe in the foreground, its files (and pid file: TMPDIR) in `work`,
    the model registered and `SEQUENCES` sequences opened."""

    def __init__(self, peer: Path, venv: Path, work: Path):
        self.peer, self.venv, self.work = peer, venv, work
        self.ports = {name: free_port() for name in ("inference", "management", "metrics")}
        self.base = f"http://{HOST}:{self.ports['inference']}"
        self.url = f"{self.base}/predictions/gru"
        bin_dir = str(venv / "bin")
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(work)}
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *cmd: str) -> None:
        subprocess.run(cmd, env=self.env, cwd=self.work, check=True, stdout=subprocess.DEVNULL)

    def __enter__(self) -> TorchServe:
        (self.work / "store").mkdir(parents=True)
        config = self.work / "config.properties"
        config.write_text(with_ports((self.peer / "config.properties").read_text(), self.ports))
        self.run(
            *("torch-model-archiver", "--model-name", "gru", "--version", "1.0", "--force"),
            *("--handler", str(self.peer / "gru_handler.py")),
            *("--config-file", str(self.peer / "model-config.yaml")),
            *("--export-path", str(self.work / "store")),
        )
        self.proc = subprocess.Popen(
            [
                *("torchserve", "--start", "--foreground", "--ncs", "--disable-token-auth"),
                *("--model-store", str(self.work / "store"), "--ts-config", str(config)),
            ],
            env=self.env,
            cwd=self.work,
            stdout=(self.work / "torchserve.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            self.ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def ready(self) -> None:
        for _ in range(120):
            try:
                if httpx.get(f"{self.base}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"TorchServe exited: see {self.work}/torchserve.out")
            time.sleep(0.5)
        mgmt = f"http://{HOST}:{self.ports['management']}"
        r = httpx.post(f"{mgmt}/models?url=gru.mar&initial_workers=1&synchronous=true", timeout=120)
        r.raise_for_status()

        def top5(seq: str, text: str) -> object:
            headers = {"ts_request_sequence_id": seq}
            r = httpx.post(self.url, json={"text": text}, headers=headers, timeout=30)
            r.raise_for_status()
            return r.json()["top5"]

        top5("smoke-a", "the cat")  # the state check of the peer's run.sh
        if top5("smoke-a", "is") != top5("smoke-b", "the cat is"):
            raise RuntimeError("TorchServe's sequence state check failed")
        ids = [f"seq-{i:03d}" for i in range(SEQUENCES)]
        for seq in ids:
            top5(seq, "the")
        (self.work / "seq_ids.txt").write_text("\n".join(ids) + "\n")

    def cpu_s(self) -> float:
        """CPU seconds of the TorchServe CLI, its JVM and the JVM's Python worker."""
        assert self.proc is not None
        return tree_cpu_s(self.proc.pid)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        subprocess.run(
            ["torchserve", "--stop", "--foreground"], env=self.env, cwd=self.work, check=False
        )
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


GRANIAN = "ours gru-copy, granian"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, help="model store with gru-copy and gru (default: train)")
    p.add_argument("--ts-venv", type=Path, default=Path("/tmp/ts-venv"))
    p.add_argument("--peer", type=Path, default=PEER, help="the peer's folder (read only)")
    p.add_argument("--duration", type=float, default=6, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--granian-too",
        action="store_true",
        help="also ours with SERVER=granian (gru-copy), up beside the others",
    )
    args = p.parse_args()
    for tool in ("wrk", "java"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}")
    ensure_venv(args.ts_venv)
    models = ("gru-copy", "gru")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or train_store(tmp / "store", models)
        os.environ["SEQ_FILE"] = str(tmp / "ts" / "seq_ids.txt")  # read by the peer's wrk script
        print(f"machine: {os.uname().machine}, {os.cpu_count()} cores, load {os.getloadavg()}")
        with contextlib.ExitStack() as stack:
            ts = stack.enter_context(TorchServe(args.peer, args.ts_venv, tmp / "ts"))
            ours = stack.enter_context(Server(store, DEFAULT_MODEL=models[0], **DEPLOYED))
            scripts = {}
            for m in models:
                ids = asyncio.run(create_sessions(ours.base, SEQUENCES, BENCH_KEY, m))
                scripts[m] = lua_sessions(ids, tmp / m, BENCH_KEY)
            ours_cases = [(f"ours {m}", ours, scripts[m]) for m in models]
            if args.granian_too:
                gran = stack.enter_context(
                    Server(store, DEFAULT_MODEL=models[0], SERVER="granian", **DEPLOYED)
                )
                ids = asyncio.run(create_sessions(gran.base, SEQUENCES, BENCH_KEY, models[0]))
                ours_cases.append((GRANIAN, gran, lua_sessions(ids, tmp / "granian", BENCH_KEY)))
            cases = [
                case
                for conns in (64, 1)
                for case in (
                    Case(
                        f"TorchServe c{conns}",
                        ts.url,
                        conns,
                        args.peer / "seq_predict.lua",
                        ts.cpu_s,
                    ),
                    *(
                        Case(f"{label} c{conns}", srv.base, conns, script, srv.cpu_s)
                        for label, srv, script in ours_cases
                    ),
                )
            ]
            runs = in_turn(cases, args.rounds, args.duration)
        print(
            f"\nwrk -t1, {args.rounds} rounds of {args.duration:g} s, in turn, medians "
            f"(load {os.getloadavg()}):"
        )
        for conns in (64, 1):
            ref = runs[f"TorchServe c{conns}"]
            print(f"{conns} connection{'s' if conns > 1 else ''}:")
            print(row("TorchServe predict (sequence)", summary(ref)))
            for label, _, _ in ours_cases:
                s = summary(runs[f"{label} c{conns}"], ref)
                print(row(f"{label} session next-word", s, "TorchServe"))


if __name__ == "__main__":
    main()
