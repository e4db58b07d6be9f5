"""Recorded traces for tests (skipping when the shared data is absent) and a replay endpoint over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from dynasor_client import Endpoint
from dynasor_client.traces import TraceQuestion, load_traces

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"


def traces_or_skip(name: str) -> list[TraceQuestion]:
    """The questions of ``shared/data/traces/<name>``; skips the test when the file is absent."""
    path = TRACES / name
    if not path.exists():
        pytest.skip(f"recorded traces not found: {path} (the shared data folder is absent)")
    return load_traces(path)


@contextlib.asynccontextmanager
async def replay_endpoint(questions: Sequence[TraceQuestion], *, seed: int = 0) -> AsyncIterator[Endpoint]:
    """An :class:`Endpoint` on a fresh replay server of ``questions`` (H100 profile, unthrottled)."""
    from dynasor_client.replay import ReplayServer

    async with (
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=seed) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
    ):
        yield endpoint
