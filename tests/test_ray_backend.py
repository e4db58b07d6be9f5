"""Batches over a local Ray cluster (two worker processes) against the replay server: a worker killed
mid-batch, every program finished exactly once, the global budget held by leases, results equal to
one process's under the same seeds and program ids."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra (installed by `make test`)")

from dynasor_client.distributed import RayBackend, WorkerState  # noqa: E402
from dynasor_client.program import ProgramResult, StopReason  # noqa: E402
from dynasor_client.runtime import Runtime  # noqa: E402
from dynasor_client.traces import TraceQuestion  # noqa: E402

from .support.replay import traces_or_skip  # noqa: E402
from .test_runtime import sc, served  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def questions() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")[:24]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of two CPUs: room for two one-CPU workers (each its own process)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def spent_on_server(metrics: dict[str, Any]) -> int:
    """What the server processed, counted as the budget counts it: uncached prompt plus generated."""
    return int(metrics["prompt_tokens"] - metrics["cached_prompt_tokens"] + metrics["tokens_generated"])


async def single_process(questions: Sequence[TraceQuestion], ids: Sequence[str]) -> list[ProgramResult]:
    """The same programs in one process, under the same server seed and program ids."""
    async with served(questions) as (_, endpoint), Runtime(endpoint) as runtime:
        handles = [runtime.submit(sc(q), program_id=pid) for q, pid in zip(questions, ids, strict=True)]
        return [await h for h in handles]


async def test_a_batch_survives_a_killed_worker(
    cluster: None, questions: list[TraceQuestion], tmp_path: Path
) -> None:
    killed: dict[str, Any] = {}

    def kill_one(index: int, workers: Sequence[WorkerState]) -> None:
        """At the first result: kill the busiest worker, with programs still in flight on it."""
        busy = [w for w in workers if w.alive and w.running]
        if killed or not busy:
            return
        victim = max(busy, key=lambda w: len(w.running))
        killed.update(name=victim.name, running=set(victim.running))
        os.kill(victim.pid, signal.SIGKILL)

    backend = RayBackend(workers=2, in_flight=6, lease_tokens=8192, id_prefix="t", on_settled=kill_one)
    save_to = tmp_path / "batch.jsonl"
    async with served(questions) as (server, endpoint), Runtime(endpoint, token_budget=5_000_000) as runtime:
        batch = await runtime.run_batch(
            [sc(q) for q in questions], backend=backend, progress=False, save_to=save_to
        )
        on_server = spent_on_server(server.metrics())
    stats = backend.last_stats
    assert killed, "no worker was killed: the test did not test anything"
    # Every program finished, each exactly once (one record per index in save_to).
    assert batch.finished == len(questions) and not batch.errors and not batch.interrupted
    records = [json.loads(line) for line in save_to.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(len(questions)))
    # The dead worker's unfinished programs ran again elsewhere, under a new program id.
    rerun = {i for i, r in enumerate(batch.results) if r is not None and r.program_id != f"t-{i}"}
    assert rerun and rerun <= killed["running"]
    assert stats["workers_lost"] == 1 and stats["reruns"] == len(rerun)
    # Leases never exceeded the budget; the ledger counted what the server processed (the dead
    # worker's unreported lease is written off as spent, so the ledger may count more, not less).
    ledger = stats["ledger"]
    assert ledger["peak_granted"] <= ledger["total"]
    assert ledger["lost"] > 0 and ledger["spent"] >= on_server - ledger["lost"]
    assert stats["lease_messages"] >= 2 and runtime.budget.spent == ledger["spent"]
    # Equal to one process's results, program by program.
    alone = await single_process(questions, [r.program_id for r in batch.results if r is not None])
    got = [(r.answer, r.tokens.generated, r.stop_reason) for r in batch.results if r is not None]
    assert got == [(r.answer, r.tokens.generated, r.stop_reason) for r in alone]


async def test_a_binding_budget_holds_across_workers(cluster: None, questions: list[TraceQuestion]) -> None:
    total = 6_000  # about 40% of what these programs spend unconstrained
    backend = RayBackend(workers=2, in_flight=6, lease_tokens=1_000)
    async with served(questions) as (server, endpoint), Runtime(endpoint, token_budget=total) as runtime:
        batch = await runtime.run_batch([sc(q) for q in questions], backend=backend, progress=False)
        on_server = spent_on_server(server.metrics())
    stats = backend.last_stats
    ledger = stats["ledger"]
    assert batch.finished == len(questions) and not batch.errors
    assert stats["outcomes"].get(StopReason.BUDGET.value, 0) > 0  # the budget did bind
    # Leases never exceeded the budget, and no worker spent past its leases (beyond the error of
    # the prompts' estimates, as in one process): counted by the programs themselves...
    assert ledger["peak_granted"] <= total
    assert all(book["spent"] <= book["granted"] * 1.02 for book in ledger["workers"].values())
    counted = sum(r.tokens.total for r in batch.results if r is not None)
    assert counted == ledger["spent"] <= total * 1.02, (counted, ledger["spent"], total)
    # ...and by the server: past what one process spends under the same budget, by less than a
    # lease per worker.
    async with served(questions) as (server, endpoint), Runtime(endpoint, token_budget=total) as runtime:
        await runtime.run_batch([sc(q) for q in questions], progress=False)
        alone = spent_on_server(server.metrics())
    assert on_server <= alone + 2 * backend.lease_tokens, (on_server, alone)
