"""`python -m app` as a real process on a free port, for tests that need the whole thing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.redis_server import free_port


class AppProcess:
    def __init__(self, store: Path, port: int | None = None, **env: str):
        self.store = store
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LOG_LEVEL": "info", **env}
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self, wait_ready: bool = True) -> AppProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "--store",
                str(self.store),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--device",
                "cpu",
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.base}/ready", timeout=1)
                if r.status_code == 200 or not wait_ready:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start-up:\n{self.proc.stdout.read()}")  # type: ignore[union-attr]
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("server did not get ready")

    def stop(self) -> int:
        """SIGTERM (graceful shutdown); the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.output += self.proc.stdout.read()  # type: ignore[union-attr]
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)
