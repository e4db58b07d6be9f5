"""The runtime and the proxy in front of a real router: smg (the Shepherd Model Gateway) with the
``cache_aware`` policy over two embedded llama.cpp servers. A program's rounds share their prompt,
so the router keeps them on one server and they hit its prefix cache (``cached_tokens``); nothing
the library reads assumes one server behind the URL (capabilities are detected through the
router, and limits one replica has are learnt from its refusals)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from dynasor_client import Endpoint, LocalLlamaServer, ProgramContext, ProgramResult, Runtime, StopReason
from dynasor_client.endpoints import SamplingParams
from dynasor_client.proxy import ProxyConfig, ProxyServer

pytestmark = pytest.mark.local_model  # conftest skips it, saying why, without the local model

SLOTS = 2  # per llama.cpp server: small, to keep memory and CPU low (and to test learnt limits)
STARTUP_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _smg() -> str:
    found = shutil.which("smg", path=str(Path(sys.executable).parent)) or shutil.which("smg")
    if found is None:
        pytest.skip("smg is not installed: pip install 'dynasor-client[router]' (make install does)")
    return found


def _metric(root_url: str, name: str) -> float:
    text = httpx.get(f"{root_url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} "))


@dataclass
class Router:
    url: str  # the router's API root, /v1 included
    servers: list[LocalLlamaServer]

    def predicted(self) -> list[float]:
        """Tokens generated so far by each server (llama.cpp's own counter)."""
        return [_metric(s.root_url, "llamacpp:tokens_predicted_total") for s in self.servers]


def _wait_ready(proc: subprocess.Popen[bytes], root: str, log: Path) -> None:
    """Until the router lists the model and both workers (its own health checks passed)."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"smg could not start (exit {proc.returncode}): {log.read_text()[-1500:]}")
        try:
            models = httpx.get(f"{root}/v1/models", timeout=2)
            workers = httpx.get(f"{root}/workers", timeout=2).json().get("workers", [])
            if models.status_code == 200 and len(workers) == 2:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)  # polling the router's own state
    pytest.skip(f"smg did not become ready within {STARTUP_S:.0f} s: {log.read_text()[-1500:]}")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    smg = _smg()
    log = tmp_path_factory.mktemp("smg") / "smg.log"
    with (
        LocalLlamaServer(n_parallel=SLOTS, n_ctx_per_slot=512, n_threads=1) as a,
        LocalLlamaServer(n_parallel=SLOTS, n_ctx_per_slot=512, n_threads=1) as b,
        log.open("wb") as out,
    ):
        port = _free_port()
        command = [
            smg, "launch", "--host", "127.0.0.1", "--port", str(port), "--policy", "cache_aware",
            "--worker-urls", a.root_url, b.root_url,
            "--prometheus-port", str(_free_port()), "--log-level", "warn",
            "--shutdown-grace-period-secs", "0",
        ]  # fmt: skip
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            root = f"http://127.0.0.1:{port}"
            _wait_ready(proc, root, log)
            yield Router(f"{root}/v1", [a, b])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _question() -> str:
    # A fresh nonce first: no earlier test has this prefix cached anywhere.
    return f"[{secrets.token_hex(4)}] " + "Tom has 27 apples and buys 21 more. " * 8 + "How many apples?"


async def _rounds(context: ProgramContext) -> ProgramResult:
    """A program of three rounds on one question, as self-consistency's are."""
    messages = [{"role": "user", "content": _question()}]
    cached = []
    for _ in range(3):
        generation = await context.generate(messages=messages, params=SamplingParams(max_tokens=4))
        cached.append(generation.usage.cached_prompt_tokens or 0)
    return ProgramResult(
        answer=generation.texts[0], confidence=0.0, tokens=context.usage, steps=3,
        stop_reason=StopReason.CAP, certaindex=(), program_id=context.program_id,
        details={"cached": cached, "prompt_tokens": generation.usage.prompt_tokens},
    )  # fmt: skip


async def test_runtime_behind_the_router(router: Router) -> None:
    async with Endpoint(router.url, timeout=60) as endpoint:
        # Detected through the router: its generation routes answer, but the server-only routes
        # (/props, /tokenize, /apply-template) are not routed, so what they would tell stays off
        # rather than being read from one replica as if it were the whole fleet.
        caps = await endpoint.capabilities()
        assert caps.completions and caps.chat
        assert caps.max_n is None and not caps.tokenize and caps.chat_template is None
        # n above one replica's slots: refused by the replica, the limit is learnt, the request split.
        split = await endpoint.complete("Count: 1, 2,", n=SLOTS + 1, max_tokens=2, temperature=0.8)
        assert len(split.choices) == SLOTS + 1 and split.requests == 2

        before = router.predicted()
        async with Runtime(endpoint) as runtime:
            results = await asyncio.gather(runtime.run(_rounds), runtime.run(_rounds))
        after = router.predicted()
    for result in results:
        cached, prompt = result.details["cached"], result.details["prompt_tokens"]
        # The first round computes the prompt; the later ones find most of it in the cache of the
        # server the router sent them to, so they landed where the first round did.
        assert cached[0] < prompt // 2
        assert all(c >= prompt - 8 for c in cached[1:]), (cached, prompt)
    assert runtime.metrics.tokens["cached_prompt"] >= 4 * (results[0].details["prompt_tokens"] - 8)
    assert sum(after) - sum(before) >= 6 * 1  # six rounds generated, across the fleet


@pytest.fixture
async def proxy(router: Router) -> AsyncIterator[ProxyServer]:
    async with ProxyServer(ProxyConfig(upstream=router.url, timeout_s=60)) as server:
        yield server


async def test_proxy_behind_the_router(proxy: ProxyServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key="none", max_retries=0, timeout=60
    ) as client:
        messages: list[Any] = [{"role": "user", "content": _question()}]
        # Pass-through: the same prefix twice, the second from the prefix cache of the same server.
        usages = []
        for _ in range(2):
            reply = await client.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=messages,
                max_tokens=4,
            )
            assert reply.usage is not None
            usages.append(reply.usage)
        details = [u.prompt_tokens_details for u in usages]
        assert details[1] is not None and (details[1].cached_tokens or 0) >= usages[1].prompt_tokens - 8
        # A dynasor program through the proxy and the router: rounds of self-consistency.
        answer = await client.chat.completions.create(
            model="smollm2-135m-instruct", messages=messages, max_tokens=4,
            extra_body={"dynasor": {"algorithm": "sc", "n": 4}},
        )  # fmt: skip
        info = (answer.model_extra or {})["dynasor"]
        assert info["algorithm"] == "sc" and 1 <= info["samples"] <= 4
        assert answer.usage is not None and answer.usage.completion_tokens > 0
