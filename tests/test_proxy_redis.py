"""Proxy replicas sharing key budgets and usage through Redis (issue 20, part 2), on real servers on
127.0.0.1: a ``redis-server`` started here on a free port, two proxy replicas on it (in this
process, and one as a ``dynasor-client proxy --redis`` subprocess that is killed mid-request), the
replay server and the fault-injection server upstream.

Skipped, saying why, where ``redis-server`` (Debian package ``redis-server``; ``make install``
installs it as root) or redis-py (the ``[redis]`` extra) is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynasor_client.proxy import KeyStore, ProxyConfig, ProxyServer
from dynasor_client.replay import ReplayServer
from dynasor_client.traces import TraceQuestion
from tests.support.faulty_server import MODEL_ID, FaultyServer
from tests.support.replay import traces_or_skip

redis_asyncio = pytest.importorskip(
    "redis.asyncio", reason="redis-py is not installed: pip install 'dynasor-client[redis]'"
)

pytestmark = pytest.mark.redis

SLACK = 32  # tokens of prompt-estimate error allowed per request (tests/test_budget_billing.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh ``redis-server`` on a free loopback port (no persistence), for this module."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; make install does it)"
        )
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*command, "--dir", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while True:  # ready once it answers PING
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    break
            assert proc.poll() is None, f"redis-server exited: {proc.stdout.read() if proc.stdout else ''!r}"
            assert time.monotonic() < deadline, "redis-server did not answer PING in 15 s"
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def _usage(redis: Any, key: str) -> dict[str, int]:
    """What Redis holds for ``key``'s budget: spent, reserved, requests, expired, held (in flight)."""
    base = f"dynasor:{{{hashlib.sha256(key.encode()).hexdigest()}}}"
    usage = await redis.hgetall(f"{base}:usage")
    found = {name: int(usage.get(name, 0)) for name in ("spent", "reserved", "requests", "expired")}
    return {**found, "held": int(await redis.zcard(f"{base}:held"))}


async def _until(redis: Any, key: str, done: Any) -> dict[str, int]:
    """Poll Redis until ``done(usage)`` (the replicas settle in the background), for 15 s at most."""
    usage: dict[str, int] = {}
    try:
        async with asyncio.timeout(15):
            while not done(usage := await _usage(redis, key)):  # noqa: ASYNC110 (another server)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"Redis never got there: {usage}") from None
    return usage


# ---------------------------------------------------------------------------- two replicas, one budget


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")[:40]


async def test_two_replicas_hold_one_key_budget(
    redis_url: str, redis: Any, svamp: list[TraceQuestion]
) -> None:
    """Concurrent clients of one key on two replicas: pass-through streams and whole answers, n=1
    and n=3, and self-consistency programs. The key's budget is spent once across both."""
    key, budget, most = "sk-redis-shared-0001", 6000, 64
    biggest = 3 * most + 200  # the largest request: n=3 x 64 tokens after a prompt of < 200
    statuses: list[int] = []
    billed: list[int] = []

    async def call(proxy: ProxyServer, i: int, n: int, stream: bool, sc: bool) -> None:
        body: dict[str, Any] = {
            "model": "replay+sc4" if sc else "replay",
            "messages": [{"role": "user", "content": svamp[i % 40].question}],
            "max_tokens": most,
            "n": n,
            "stream": stream,
        }
        if sc:
            body["dynasor"] = {"token_budget": biggest}
        if stream:
            body["stream_options"] = {"include_usage": True}
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=proxy.base_url, timeout=60) as http,
            http.stream("POST", "/chat/completions", json=body, headers=headers) as answer,
        ):
            text = (await answer.aread()).decode()
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            found = re.findall(r'"total_tokens":\s*(\d+)', text)
            assert found, text[-500:]
            billed.append(int(found[-1]))
        else:
            assert answer.status_code == 429 and "insufficient_quota" in text, text

    def config(upstream: ReplayServer) -> ProxyConfig:
        keys = KeyStore({key: budget})
        return ProxyConfig(
            upstream=upstream.base_url, capabilities=upstream.capabilities, keys=keys, redis=redis_url
        )

    async with (
        ReplayServer(svamp, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=3) as replay,
        ProxyServer(config(replay)) as one,
        ProxyServer(config(replay)) as two,
    ):
        calls = [
            call(proxy, i, n, stream, sc)
            for i in range(8)
            for proxy in (one, two)
            for n, stream, sc in ((1, True, False), (3, True, False), (1, False, False), (3, False, False))
        ]
        calls += [call(proxy, i, 1, i % 2 == 0, True) for i in range(6) for proxy in (one, two)]
        await asyncio.gather(*calls)
        usage = await _until(redis, key, lambda u: u["held"] == 0)  # every reservation settled
        # Both replicas report the shared spending (a key sees its own).
        admin = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=30) as http:
            seen = [
                (await http.get(f"{p.base_url.removesuffix('/v1')}/dynasor/stats", headers=admin)).json()
                for p in (one, two)
            ]
    spent = usage["spent"]
    print(f"Redis key budget {budget}: spent {spent}, statuses {sorted(statuses)}, usage {usage}")
    assert usage["reserved"] == 0 and usage["expired"] == 0
    assert usage["requests"] >= len(billed)  # (and the programs refused once they started)
    assert spent == sum(billed)  # every request billed once, whichever replica served it
    assert spent <= budget + 2 * biggest  # at most one request in flight per replica beyond it ...
    assert spent <= budget + SLACK * len(statuses)  # ... in fact only the prompt estimates' error
    assert spent >= 0.8 * budget
    assert set(statuses) == {200, 429}  # what no longer fits is refused, on both replicas
    for stats in seen:
        (mine,) = stats["keys"].values()
        assert mine == {"requests": usage["requests"], "spent": spent, "budget": budget}


# ---------------------------------------------------------------------------- a replica that dies


@pytest.fixture
def faulty(faulty_server: FaultyServer) -> FaultyServer:
    faulty_server.reset()
    return faulty_server


def _replica(upstream: str, keys: Path, redis_url: str, ttl: str) -> tuple[subprocess.Popen[str], str]:
    """``dynasor-client proxy --redis`` in a subprocess; its base URL once it serves."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "dynasor_client", "proxy", "--upstream", upstream, "--port", "0"]
    command += ["--api-keys-file", str(keys), "--redis", redis_url, "--reservation-ttl", ttl]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
    assert match, f"the replica did not start: {line!r}"
    return proc, match.group(1)


async def test_a_killed_replica_leaves_no_reservation_behind(
    redis_url: str, redis: Any, faulty: FaultyServer, tmp_path: Path
) -> None:
    key, budget, ttl = "sk-redis-killed-0002", 600, 1.0
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{key} {budget}\n", encoding="utf-8")
    proc, url = _replica(faulty.base_url("stall-4"), keys, redis_url, str(ttl))
    try:
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 400,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as answer,
        ):
            assert answer.status_code == 200
            events = answer.aiter_lines()
            while "w0" not in await anext(events):  # the first token arrived: the request is mid-stream
                pass
            held = await _usage(redis, key)
            assert held["held"] == 1 and held["reserved"] >= 400  # the replica's reservation
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        killed = time.monotonic()
        # The other replica (this process) sweeps the key's expired reservations.
        config = ProxyConfig(
            upstream=faulty.base_url("ok"),
            keys=KeyStore({key: budget}),
            redis=redis_url,
            reservation_ttl_s=ttl,
        )
        async with ProxyServer(config) as other:
            usage = await _until(redis, key, lambda u: u["held"] == 0)
            released_after = time.monotonic() - killed
            assert usage == {"spent": 0, "reserved": 0, "requests": 0, "expired": 1, "held": 0}
            # All of the budget is free again: a request of all of it fits, unshrunk.
            whole = {**body, "max_tokens": budget - 50, "stream": False}
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(f"{other.base_url}/chat/completions", json=whole, headers=headers)
            assert answer.status_code == 200, answer.text
            assert faulty.requests("ok")[-1].json["max_tokens"] == budget - 50
        print(
            f"reservation of the killed replica released {released_after:.2f} s after the kill (TTL {ttl} s)"
        )
        assert released_after < ttl + 10  # the TTL, a sweep (TTL / 3), and a loaded machine's delays
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- Redis unreachable


async def test_unreachable_redis_fails_closed_for_budgeted_keys(faulty: FaultyServer) -> None:
    budgeted, unlimited = "sk-redis-budgeted-0003", "sk-redis-unlimited-0004"
    config = ProxyConfig(
        upstream=faulty.base_url("ok"),
        keys=KeyStore({budgeted: 1000, unlimited: None}),
        redis=f"redis://127.0.0.1:{_free_port()}/0",  # nothing listens there
    )
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    async with ProxyServer(config) as proxy, httpx.AsyncClient(base_url=proxy.base_url, timeout=30) as http:
        refused = await http.post(
            "/chat/completions", json=body, headers={"Authorization": f"Bearer {budgeted}"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "budget_store_unavailable"
        assert "cannot be reached" in refused.json()["error"]["message"]
        served = await http.post(
            "/chat/completions", json=body, headers={"Authorization": f"Bearer {unlimited}"}
        )
        assert served.status_code == 200, served.text  # an unlimited key has nothing to overspend
    assert faulty.generation_count("ok") == 1  # the refused request never went upstream


# ---------------------------------------------------------------------------- the latency figure


async def test_reservation_latency_reports_percentiles(redis_url: str) -> None:
    from dynasor_client.proxy import redis_latency_table, reservation_latency

    result = await reservation_latency(redis_url, requests=40, concurrency=(1, 4))
    assert [run["clients"] for run in result["runs"]] == [1, 4]
    for run in result["runs"]:
        assert 0 < run["reserve_ms"]["p50"] <= run["reserve_ms"]["p99"]
        assert run["reserve_and_settle_ms"]["p50"] >= run["reserve_ms"]["p50"]
    assert "reserve+settle" in redis_latency_table(result)
