"""Real processes on free loopback ports, for the tests and the benchmarks: the app
(`python -m app`) and Debian's redis-server. Not part of the service: nothing under app/,
model_store/ or training/ imports it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

HOST = "127.0.0.1"
# The device the tests run the app on: the CPU, unless TEST_DEVICE says cuda (the GPU machine's
# run of the suite, scripts/gpu-check.sh). The benchmarks give DEVICE themselves.
TEST_DEVICE = os.environ.get("TEST_DEVICE", "cpu")
# How far a next-word probability may move (absolute) between two computations of one text, in
# pieces or whole, batched or alone: float rounding on a CPU (measured up to 1.4e-6); on a GPU,
# cuDNN and cuBLAS sum in another order for each batch shape (measured 1.2e-5 on an H200).
PROB_TOL = 1e-5 if TEST_DEVICE == "cpu" else 1e-4


def free_port() -> int:
    """A loopback port nothing listens on (now: another process may take it before us)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class AppProcess:
    """`python -m app --store STORE` on a free port; the settings come from `env`, over this
    process's environment (DEVICE TEST_DEVICE and LOG_LEVEL info unless given). With `capture` its
    output is kept in `output` (read when it stops); else it goes nowhere. With `cwd` the app
    is the one of that checkout (a benchmark's "before" tree), else this one's."""

    READY_S = 120  # the models load and warm up first

    def __init__(
        self,
        store: Path,
        port: int | None = None,
        capture: bool = True,
        cwd: Path | None = None,
        **env: str,
    ):
        self.store = store
        self.cwd = cwd
        self.port = port or free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.env = {**os.environ, "DEVICE": TEST_DEVICE, "LOG_LEVEL": "info", **env}
        self.capture = capture
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def command(self) -> list[str]:
        """What runs: `python -m app` (a benchmark's subclass runs the app otherwise)."""
        args = ["--store", str(self.store), "--host", HOST, "--port", str(self.port)]
        return [sys.executable, "-m", "app", *args]

    def start(self, wait_ready: bool = True) -> AppProcess:
        """Start it and wait until /ready answers 200 (any answer: `wait_ready` False)."""
        out = subprocess.PIPE if self.capture else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.cwd,
        )
        deadline = time.monotonic() + self.READY_S
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.base}/ready", timeout=1)
                if r.status_code == 200 or not wait_ready:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                said = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"server exited at start-up:\n{said}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("server did not get ready")

    def stop(self) -> int:
        """SIGTERM (graceful shutdown); the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        if self.proc.stdout:
            self.output += self.proc.stdout.read()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user + system, all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]
        return kib / 1024


class RedisServer:
    """Debian's redis-server on a free port, keeping its files in `folder`, no persistence."""

    def __init__(self, folder: Path, port: int | None = None):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server is needed: apt-get install -y redis-server (.ci/run does)"
            )
        self.exe, self.folder = exe, folder
        self.port = port or free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start it and wait until it answers a PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        where = ["--port", str(self.port), "--bind", HOST, "--dir", str(self.folder)]
        self.proc = subprocess.Popen(
            [self.exe, *where, "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
