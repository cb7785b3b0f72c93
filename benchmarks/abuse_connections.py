"""Connection abuse against the real server: a normal client's latency alone and while, in turn,
slow-loris clients hold connections, huge header lines arrive, and a flood passes MAX_CONNECTIONS.

    python -m benchmarks.abuse_connections                 # 15 s a phase
    python -m benchmarks.abuse_connections --seconds 20 --loris 5000

The normal client sends `POST /v1/next-word` at a steady rate (--rate, in a thread of its own,
one kept-alive connection) and counts errors. The abusers run in this process's event loop and
reconnect as soon as the server closes them, so the abuse lasts the whole phase. Prints, per
phase: the normal client's p50/p99/max and errors, what the abusers were answered, and the
server's RSS and open file descriptors before and after. Trains a `gru` checkpoint into a temp
store unless --model-store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.serving import Server, train_store

SLOW_HEAD = b"POST /v1/next-word HTTP/1.1\r\nHost: x\r\n"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def normal_client(base: str, rate: float, seconds: float, out: list[float], errors: Counter[str]):
    with httpx.Client(base_url=base, timeout=30) as c:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            at = start + i / rate
            if (wait := at - time.perf_counter()) > 0:
                time.sleep(wait)
            t = time.perf_counter()
            try:
                r = c.post("/v1/next-word", json={"text": "one , two ,"})
                if r.status_code != 200:
                    errors[str(r.status_code)] += 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
                continue
            out.append(time.perf_counter() - t)


async def answered(reader: asyncio.StreamReader, seen: Counter[str]) -> None:
    try:
        line = await reader.readline()
        seen[line.split(b" ")[1].decode() if line else "closed"] += 1
    except (OSError, IndexError):
        seen["reset"] += 1


async def loris(port: int, until: float, seen: Counter[str]) -> None:
    """Hold a connection with a head that never ends; reconnect when closed."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            seen["connect failed"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(SLOW_HEAD)
            await asyncio.wait_for(answered(reader, seen), until - time.monotonic())
        except TimeoutError:
            return
        finally:
            writer.close()


async def huge_header(port: int, until: float, mib: int, seen: Counter[str]) -> None:
    """Send a header line of `mib` MiB, again and again."""
    chunk = b"a" * (1 << 20)
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(mib):
                writer.write(chunk)
                await writer.drain()
                if reader.at_eof() or time.monotonic() > until:
                    break
        except OSError:
            pass
        await answered(reader, seen)
        writer.close()


def phase(server: Server, name: str, args: argparse.Namespace, abuse: str | None) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    rss0, fds0 = rss_mib(pid), fds(pid)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    peak_fds = fds0

    async def abusers() -> None:
        nonlocal peak_fds
        until = time.monotonic() + args.seconds
        tasks = []
        if abuse == "loris":
            for i in range(args.loris):
                tasks.append(asyncio.create_task(loris(server.port, until, seen)))
                if i % 200 == 199:
                    await asyncio.sleep(0.05)
        elif abuse == "header":
            tasks += [
                asyncio.create_task(huge_header(server.port, until, args.header_mib, seen))
                for _ in range(2)
            ]
        while time.monotonic() < until:
            peak_fds = max(peak_fds, fds(pid))
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # the abusers' sockets closed before the next phase

    client = threading.Thread(
        target=normal_client, args=(server.base, args.rate, args.seconds, latencies, errors)
    )
    client.start()
    asyncio.run(abusers())
    client.join()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    print(
        f"{name:<28} {len(latencies):>6} {q[49] * 1000:>7.1f} {q[98] * 1000:>8.1f} "
        f"{max(latencies, default=float('nan')) * 1000:>8.1f} {sum(errors.values()):>6}  "
        f"{rss0:>6.0f} -> {rss_mib(pid):>4.0f}  {fds0:>4} / {peak_fds:>5}  "
        f"{dict(seen) or ''} {dict(errors) or ''}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0, help="each phase")
    p.add_argument("--rate", type=float, default=50.0, help="normal client's requests/s")
    p.add_argument("--loris", type=int, default=2000, help="slow-loris connections held")
    p.add_argument("--header-mib", type=int, default=250, help="size of each huge header line")
    p.add_argument("--cap", type=int, default=500, help="MAX_CONNECTIONS of the flood phase")
    p.add_argument("--model-store", type=Path, help="a store with a gru checkpoint")
    args = p.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.model_store or train_store(Path(tmp) / "store")
        print(
            f"\n{'phase':<28} {'reqs':>6} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} {'errors':>6}"
            f"  {'RSS MiB':>14}  {'fds / peak':>12}  abusers answered"
        )
        with Server(store, DEVICE="cpu", ACCESS_LOG="false") as server:
            phase(server, "alone", args, None)
            phase(server, f"{args.loris:,} slow-loris", args, "loris")
            phase(server, f"{args.header_mib} MiB header lines x2", args, "header")
            phase(server, "alone, after", args, None)
        env = {"MAX_CONNECTIONS": str(args.cap), "HEADER_TIMEOUT_SECONDS": "60"}
        with Server(store, DEVICE="cpu", ACCESS_LOG="false", **env) as server:
            phase(server, f"{args.loris:,} loris, cap {args.cap}", args, "loris")


if __name__ == "__main__":
    main()
