"""What a shared budget costs a request: the latency of a Redis reservation and its settlement
(``dynasor-client bench redis``; docs/distributed.md). Reported, never asserted."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._keys import KeyStore
from ._redis import RedisStore

__all__ = ["local_redis", "redis_latency_table", "reservation_latency"]


async def reservation_latency(
    url: str, *, requests: int = 2000, concurrency: tuple[int, ...] = (1, 16), tokens: int = 300
) -> dict[str, Any]:
    """Reserve and settle ``requests`` requests of one key against the Redis at ``url``, with
    ``concurrency`` clients at once (one run per level): per request, the milliseconds of the
    reservation (:meth:`RedisStore.reserve`), of the settlement (:meth:`RedisStore.settle_now`) and
    of both, as p50/p99 (and mean); Redis's PING round trip for scale. The key's budget never runs
    out (no waiting)."""
    runs = [await _run(url, clients, requests, tokens) for clients in concurrency]
    return {"benchmark": "redis-reservation", "url": url.rpartition("@")[2], "runs": runs}


async def _run(url: str, clients: int, requests: int, tokens: int) -> dict[str, Any]:
    store = RedisStore(url, prefix=f"dynasor-bench-{time.time_ns()}")
    (account,) = KeyStore({f"sk-bench-{clients}-{time.time_ns()}": 10**15}).accounts()
    reserve_ms: list[float] = []
    settle_ms: list[float] = []
    ping_ms: list[float] = []

    async def client(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            lease = await store.reserve(account, tokens, 16)
            reserved = time.perf_counter()
            await store.settle_now(lease, tokens - 10)
            reserve_ms.append((reserved - started) * 1000)
            settle_ms.append((time.perf_counter() - reserved) * 1000)

    try:
        for _ in range(50):
            started = time.perf_counter()
            await store.redis.ping()
            ping_ms.append((time.perf_counter() - started) * 1000)
        began = time.perf_counter()
        share, extra = divmod(requests, clients)
        await asyncio.gather(*(client(share + (i < extra)) for i in range(clients)))
        elapsed = time.perf_counter() - began
        spending = (await store.spending([account]))[account.fingerprint]
        assert spending.reserved == 0 and spending.spent == requests * (tokens - 10)
        await store.redis.delete(*store.keys(account.digest))
    finally:
        await store.aclose()
    return {
        "clients": clients,
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "reserve_ms": _percentiles(reserve_ms),
        "settle_ms": _percentiles(settle_ms),
        "reserve_and_settle_ms": _percentiles(list(np.add(reserve_ms, settle_ms))),
        "ping_ms": _percentiles(ping_ms),
    }


def redis_latency_table(result: dict[str, Any]) -> str:
    """The figures of :func:`reservation_latency` as a text table."""
    lines = [
        f"Redis reservation latency per request ({result['url']}), ms p50 / p99",
        f"{'clients':>7}  {'reserve':>15}  {'settle':>15}  {'reserve+settle':>15}  {'PING':>15}"
        f"  {'req/s':>8}",
    ]
    for run in result["runs"]:
        cells = [
            f"{run[name]['p50']:6.3f} / {run[name]['p99']:6.3f}"
            for name in ("reserve_ms", "settle_ms", "reserve_and_settle_ms", "ping_ms")
        ]
        lines.append(f"{run['clients']:>7}  " + "  ".join(cells) + f"  {run['requests_per_s']:>8.0f}")
    return "\n".join(lines)


@contextlib.contextmanager
def local_redis() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port (no persistence): its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ValueError("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while not _pong(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ValueError(f"redis-server did not start on port {port}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _percentiles(values: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return {
        "p50": round(float(p50), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(np.mean(values)), 4),
    }
