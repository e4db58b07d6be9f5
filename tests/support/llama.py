"""The local llama.cpp server as tests observe it: its busy slots, its count of generated tokens
(aborted requests' too), and requests that generate to max_tokens whatever the model writes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from dynasor_client import LocalLlamaServer

#: llama.cpp then generates to max_tokens: where the model would end its reply differs between CPUs.
IGNORE_EOS = {"ignore_eos": True}


async def busy_slots(server: LocalLlamaServer) -> int:
    """How many of the server's slots are generating now."""
    async with httpx.AsyncClient() as client:
        slots = (await client.get(f"{server.root_url}/slots", timeout=5)).json()
    return sum(1 for slot in slots if slot["is_processing"])


async def idle_within(server: LocalLlamaServer, seconds: float) -> None:
    """Waits until no slot generates; fails when one still does after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while await busy_slots(server):
        assert loop.time() < deadline, f"a slot still generates {seconds}s after the trace was closed"
        await asyncio.sleep(0.02)


async def predicted(server: LocalLlamaServer) -> float:
    """llama.cpp's count of every token it generated (aborted requests' too)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{server.root_url}/metrics", timeout=5)).text
    return next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("llamacpp:tokens_predicted_total ")
    )


async def predicted_settles(server: LocalLlamaServer, expected: float, within: float = 10.0) -> float:
    """The server's count once it reaches ``expected`` (or after ``within`` s): llama.cpp counts a
    request's tokens just after it sends the reply's last chunk."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (count := await predicted(server)) < expected:
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    return count


class SentBodies(httpx.AsyncBaseTransport):
    """The real HTTP transport, keeping the JSON body of every request it sends."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.content:
            self.bodies.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class IgnoreEos(httpx.AsyncBaseTransport):
    """The real HTTP transport, adding :data:`IGNORE_EOS` to every generation request (one with
    ``max_tokens``): for callers that take no server extras, such as the trace recorder."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.content:
            body = json.loads(request.content)
            if "max_tokens" in body:
                headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
                request = httpx.Request(
                    request.method,
                    request.url,
                    headers=headers,
                    json={**body, **IGNORE_EOS},
                    extensions=request.extensions,
                )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
