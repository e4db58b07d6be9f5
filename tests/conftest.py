"""Shared fixtures: the real local llama.cpp server (one per test session) and the faulty server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from dynasor_client import Capabilities, Endpoint, LocalLlamaServer
from tests.support.faulty_server import FaultyServer

LOCAL_PARALLEL = 4


@pytest.fixture(scope="session")
def local_server() -> Iterator[LocalLlamaServer]:
    with LocalLlamaServer(n_parallel=LOCAL_PARALLEL, n_ctx_per_slot=1024) as server:
        yield server


@pytest.fixture(scope="session")
def local_capabilities(local_server: LocalLlamaServer) -> Capabilities:
    """Detected once per session (detection itself is tested in test_endpoint_local)."""

    async def probe() -> Capabilities:
        async with Endpoint(local_server.base_url) as endpoint:
            return await endpoint.capabilities()

    return asyncio.run(probe())


@pytest.fixture
async def local_endpoint(
    local_server: LocalLlamaServer, local_capabilities: Capabilities
) -> AsyncIterator[Endpoint]:
    async with Endpoint(local_server.base_url, capabilities=local_capabilities, timeout=60) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def faulty_server() -> Iterator[FaultyServer]:
    with FaultyServer() as server:
        yield server
