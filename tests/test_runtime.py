"""The runtime over real HTTP (the replay engine on 127.0.0.1): batch and online use, the global token
budget, deadlines, cancellation, failures, scheduling window and observability."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynasor_client import Endpoint, ProgramCancelled, RuntimeClosed
from dynasor_client.algorithms import self_consistency
from dynasor_client.budget import BudgetManager, reject_infeasible
from dynasor_client.program import Program, ProgramContext, ProgramResult, StopReason, as_program
from dynasor_client.replay import ReplayServer
from dynasor_client.runtime import EventLog, ProgramState, Runtime, fcfs, run_batch_sync
from dynasor_client.traces import TraceQuestion

from .support.replay import traces_or_skip


@pytest.fixture(scope="module")
def questions() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")[:40]


@contextlib.asynccontextmanager
async def served(
    questions: Sequence[TraceQuestion], *, time_scale: float = 0.0, seed: int = 0
) -> AsyncIterator[tuple[ReplayServer, Endpoint]]:
    async with (
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=time_scale, seed=seed) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
    ):
        yield server, endpoint


async def server_metrics(server: ReplayServer) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.root_url}/metrics", params={"format": "json"})
        return dict(response.json())


async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Re-check ``check`` every 10 ms until it holds; fails saying ``what`` did not happen in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.01)


def sc(question: TraceQuestion, **options: Any) -> Program:
    return as_program(self_consistency, question.question, n=30, rule="paper", **options)


# ---------------------------------------------------------------------------- batch


async def test_batch_results_in_order_and_equal_to_standalone(questions: list[TraceQuestion]) -> None:
    chosen = questions[:12]
    async with served(chosen) as (_, endpoint):
        standalone = []
        for i, q in enumerate(chosen):
            from dynasor_client.algorithms import self_consistency_rule
            from dynasor_client.program import StandaloneContext

            context = StandaloneContext(endpoint, self_consistency_rule("paper", 30, 5), program_id=f"q{i}")
            standalone.append(await self_consistency(q.question, context=context, n=30, rule="paper"))
    async with served(chosen) as (_, endpoint), Runtime(endpoint, window=16) as runtime:
        handles = [runtime.submit(sc(q), program_id=f"q{i}") for i, q in enumerate(chosen)]
        results = [await h for h in handles]
    assert [r.answer for r in results] == [r.answer for r in standalone]
    assert [r.tokens.generated for r in results] == [r.tokens.generated for r in standalone]
    assert [r.stop_reason for r in results] == [r.stop_reason for r in standalone]
    assert all(h.state is ProgramState.DONE for h in handles)


async def test_run_batch_progress_summary_and_saved_results(
    questions: list[TraceQuestion], tmp_path: Path
) -> None:
    saved = tmp_path / "results.jsonl"
    async with served(questions[:10]) as (_, endpoint), Runtime(endpoint) as runtime:
        batch = await runtime.run_batch(
            [sc(q) for q in questions[:10]], concurrency=3, progress=False, save_to=saved
        )
    assert batch.finished == 10 and not batch.errors and not batch.interrupted
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(10))
    assert {line["index"]: line["answer"] for line in lines} == dict(enumerate(batch.answers()))
    assert "programs" in batch.summary and "10" in batch.summary
    assert batch.metrics["programs"] == 10 and batch.metrics["tokens"]["generated"] > 0


async def test_concurrency_bound_holds(questions: list[TraceQuestion]) -> None:
    peak = 0

    async def watched(ctx: ProgramContext, q: TraceQuestion = questions[0]) -> ProgramResult:
        nonlocal peak
        peak = max(peak, runtime.active)
        return await self_consistency(q.question, context=ctx, n=10, rule="paper")

    async with served(questions[:1]) as (_, endpoint), Runtime(endpoint) as runtime:
        batch = await runtime.run_batch([watched] * 9, concurrency=2, progress=False)
    assert batch.finished == 9 and 1 <= peak <= 2


def test_run_batch_sync_refuses_inside_a_loop() -> None:
    async def inside() -> None:
        with pytest.raises(RuntimeError, match=r"await runtime\.run_batch"):
            run_batch_sync(Endpoint("http://127.0.0.1:9/v1"), [])

    asyncio.run(inside())


# ---------------------------------------------------------------------------- budget


async def test_global_budget_held_by_reservations(questions: list[TraceQuestion]) -> None:
    budget = 12_000
    async with (
        served(questions) as (_, endpoint),
        Runtime(endpoint, token_budget=budget, window=8) as runtime,
    ):
        batch = await runtime.run_batch([sc(q) for q in questions], progress=False)
    spent = runtime.budget.spent
    # Each request reserves max_tokens x n plus its prompt's estimate before it is sent: the budget
    # is overshot by no more than the prompt estimates' error of the (at most 8) requests in flight,
    # and it is nearly used up (requests wait for others' reservations to settle, then shrink).
    assert 0.95 * budget <= spent <= budget + 8 * 32
    assert runtime.budget.reserved == 0
    reasons = [r.stop_reason for r in batch.results if r is not None]
    assert StopReason.BUDGET in reasons  # some programs were stopped by the budget
    assert batch.finished == len(questions)  # and every one of them still returned a result
    stopped = [r for r in batch.results if r is not None and r.stop_reason is StopReason.BUDGET]
    assert all(r.partial or r.steps >= 1 for r in stopped)


def test_budget_pressure_stops_sure_programs_first_and_reallocates() -> None:
    manager = BudgetManager(total=1000, per_program=100, low_water=0.5, confident_at=0.8)
    sure, unsure = manager.open(), manager.open()
    sure.certainty, sure.steps = 0.9, 2
    unsure.certainty, unsure.steps = 0.5, 2
    manager.spent = 400  # 600 left: above the low-water mark (500)
    assert manager.stop_reason(sure) is None and manager.stop_reason(unsure) is None
    manager.spent = 700  # 300 left: pressure 0.4, so certaindex >= 0.6 stops
    assert manager.stop_reason(sure) is StopReason.BUDGET
    assert manager.stop_reason(unsure) is None
    # reallocation: a program finishing under its allowance frees the rest for an uncertain one
    done = manager.open()
    done.spent = 30
    manager.close(done)
    assert manager.freed == 70
    unsure.spent = 100
    assert manager.may_dispatch(unsure) is None and unsure.allowance == 150 and manager.freed == 20
    sure.spent = 100  # a sure program gets no extension
    assert manager.may_dispatch(sure) is StopReason.BUDGET
    hopeless = manager.open()
    hopeless.certainty, hopeless.steps, hopeless.spent = 0.1, 5, 100
    assert manager.may_dispatch(hopeless) is StopReason.HOPELESS


def test_budget_counts_configured_kinds_only() -> None:
    from dynasor_client.endpoints import Usage
    from dynasor_client.program import TokenKind

    manager = BudgetManager(count={"generated"})
    account = manager.open()
    manager.charge(account, TokenKind.PROBE, Usage(prompt_tokens=50, completion_tokens=10))
    manager.charge(account, TokenKind.GENERATED, Usage(prompt_tokens=50, completion_tokens=7))
    assert account.spent == 7 and manager.spent == 7
    with pytest.raises(ValueError, match="unknown token kinds"):
        BudgetManager(count={"generated", "thinking"})


# ---------------------------------------------------------------------------- deadlines and admission


async def test_deadline_returns_best_so_far_and_aborts_requests(questions: list[TraceQuestion]) -> None:
    # The same program on a fresh server with the same seed draws the same samples at the same
    # modelled times: a first run measures when its two rounds end, and the second run's deadline
    # falls half-way through its second round.
    q = questions[0]
    chat = [{"role": "user", "content": q.question}]
    reported: list[float] = []

    async def two_rounds(ctx: ProgramContext) -> ProgramResult:
        first = await ctx.generate(messages=chat, n=5)
        ctx.report(0.4, 5, first.choices[0].text)
        reported.append(ctx.clock() - ctx.started)
        await ctx.generate(messages=chat, n=5)
        reported.append(ctx.clock() - ctx.started)
        return ctx.result(first.choices[0].text, None)

    async with served([q], time_scale=4.0, seed=4) as (_, endpoint), Runtime(endpoint) as runtime:
        await runtime.run(two_rounds, program_id="two-rounds")
    first_s, both_s = reported
    assert both_s - first_s > 0.5, reported  # the second round is long enough to be cut in
    deadline_s = (first_s + both_s) / 2
    reported.clear()
    async with served([q], time_scale=4.0, seed=4) as (server, endpoint), Runtime(endpoint) as runtime:
        result = await runtime.run(two_rounds, program_id="two-rounds", deadline_s=deadline_s)
        m = server.metrics
        await until(lambda: m()["running"] == 0 and m()["aborted"] >= 1, "the server aborting the request")
        metrics = await server_metrics(server)
    assert result.stop_reason is StopReason.DEADLINE and result.partial
    assert len(reported) == 1 and reported[0] < deadline_s  # the first round in time, the second cut
    assert result.answer is not None and result.answer == result.certaindex[-1].answer
    assert result.confidence == 0.4 and result.tokens.generated > 0
    assert metrics["running"] == 0 and metrics["aborted"] >= 1  # the server stopped working on it
    assert runtime.metrics.deadline_missed == 1


async def test_admission_rejects_infeasible_and_counts_it_missed(questions: list[TraceQuestion]) -> None:
    async with (
        served(questions[:4], time_scale=0.05) as (_, endpoint),
        Runtime(endpoint, admission=reject_infeasible()) as runtime,
    ):
        first = await asyncio.gather(*(runtime.run(sc(q), deadline_s=60) for q in questions[:4]))
        assert all(r.stop_reason is not StopReason.REJECTED for r in first)
        assert runtime.throughput() is not None
        rejected = await runtime.run(sc(questions[0]), deadline_s=1e-3, expected_tokens=1e9)
    assert rejected.stop_reason is StopReason.REJECTED and "deadline" in rejected.details["reason"]
    assert runtime.metrics.deadline_missed >= 1
    assert runtime.metrics.outcomes["rejected"] == 1


# ---------------------------------------------------------------------------- cancellation and failures


async def test_cancelling_a_thousand_programs_leaks_nothing(questions: list[TraceQuestion]) -> None:
    before = asyncio.all_tasks()
    async with served(questions[:5], time_scale=1.0) as (server, endpoint):
        async with Runtime(endpoint, window=32) as runtime:
            handles = [runtime.submit(sc(questions[i % 5])) for i in range(1000)]
            await until(lambda: server.metrics()["running"] > 0, "requests running on the server")
            assert runtime.cancel_all() == 1000
            outcomes = await asyncio.gather(*handles, return_exceptions=True)
        assert all(isinstance(o, ProgramCancelled) for o in outcomes)
        assert all(h.state is ProgramState.CANCELLED for h in handles)
        assert runtime.scheduler.in_flight == 0 and runtime.active == 0
        m = server.metrics
        await until(lambda: m()["running"] == 0 and m()["waiting"] == 0, "the server dropping the requests")
        metrics = await server_metrics(server)
        assert metrics["running"] == 0 and metrics["waiting"] == 0
    leaked = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leaked, leaked


async def test_cancel_one_program_others_finish(questions: list[TraceQuestion]) -> None:
    async with served(questions[:3], time_scale=0.2) as (_, endpoint), Runtime(endpoint) as runtime:
        handles = [runtime.submit(sc(q)) for q in questions[:3]]
        await until(lambda: handles[1].state is ProgramState.RUNNING, "program 1 sending a request")
        assert handles[1].cancel()
        with pytest.raises(ProgramCancelled):
            await handles[1]
        assert (await handles[0]).answer is not None and (await handles[2]).answer is not None
        assert not handles[1].cancel()  # already ended


async def test_a_failing_program_fails_alone(questions: list[TraceQuestion]) -> None:
    async def broken(ctx: ProgramContext) -> ProgramResult:
        await ctx.generate(messages=[{"role": "user", "content": questions[2].question}], n=1)
        raise ZeroDivisionError("the algorithm has a bug")

    async with served(questions[:3]) as (_, endpoint), Runtime(endpoint) as runtime:
        batch = await runtime.run_batch([sc(questions[0]), broken, sc(questions[1])], progress=False)
    assert batch.results[0] is not None and batch.results[2] is not None and batch.results[1] is None
    assert isinstance(batch.errors[1], ZeroDivisionError)
    assert runtime.metrics.outcomes["failed"] == 1


async def test_endpoint_failure_fails_only_its_programs(questions: list[TraceQuestion]) -> None:
    from dynasor_client import EndpointPool, EndpointUnavailable, RetryPolicy

    async with served(questions[:2]) as (server, endpoint):
        down = Endpoint("http://127.0.0.1:9/v1", model="m", capabilities=server.capabilities,
                        retry=RetryPolicy(max_attempts=1))  # fmt: skip

        async def on_dead_backend(ctx: ProgramContext) -> ProgramResult:
            return await as_program(self_consistency, questions[0].question, n=5).run(down)

        async with Runtime(endpoint) as runtime:
            good = runtime.submit(sc(questions[1]))
            bad = runtime.submit(on_dead_backend)
            with pytest.raises(EndpointUnavailable, match=r"127\.0\.0\.1:9"):
                await bad
            assert (await good).answer is not None
        # behind a pool, the same dead replica is failed over: every program finishes
        live = Endpoint(server.base_url, capabilities=server.capabilities)
        async with EndpointPool([down, live]) as pool, Runtime(pool) as runtime:
            batch = await runtime.run_batch([sc(q) for q in questions[:2] * 3], progress=False)
        assert batch.finished == 6 and not batch.errors


async def test_submit_outside_the_runtime_is_refused() -> None:
    runtime = Runtime(Endpoint("http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeClosed, match="async with Runtime"):
        runtime.submit(lambda ctx: self_consistency("q", context=ctx))
    async with runtime:
        with pytest.raises(ValueError, match="deadline_s"):
            runtime.submit(lambda ctx: self_consistency("q", context=ctx), deadline_s=0)


# ---------------------------------------------------------------------------- scheduling and observability


async def test_window_bounds_sequences_in_flight(questions: list[TraceQuestion]) -> None:
    peak = 0
    async with served(questions[:20], time_scale=0.02) as (_, endpoint):
        runtime = Runtime(endpoint, window=10, policy=fcfs())

        def watch(_: object) -> None:
            nonlocal peak
            peak = max(peak, runtime.scheduler.in_flight)

        runtime.events.listeners.append(watch)
        async with runtime:
            await runtime.run_batch([sc(q) for q in questions[:20]], progress=False)
    # a gang may overshoot the window by at most one program's round (<= 30 samples)
    assert 0 < peak <= 10 + 30


async def test_events_jsonl_and_prometheus(questions: list[TraceQuestion], tmp_path: Path) -> None:
    sink = tmp_path / "events.jsonl"
    async with (
        served(questions[:3]) as (_, endpoint),
        Runtime(endpoint, events=EventLog(sink=sink)) as runtime,
    ):
        await runtime.run_batch([sc(q) for q in questions[:3]], progress=False)
    events = [json.loads(line) for line in sink.read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"created", "request", "step", "done"} <= kinds
    per_program: dict[str, list[str]] = {}
    for e in events:
        per_program.setdefault(e["program_id"], []).append(e["event"])
    assert len(per_program) == 3
    assert all(seq[0] == "created" and seq[-1] == "done" for seq in per_program.values())
    steps = [e for e in events if e["event"] == "step"]
    assert all(0.0 <= e["certaindex"] <= 1.0 or math.isnan(e["certaindex"]) for e in steps)
    text = runtime.metrics.prometheus()
    assert 'dynasor_tokens_total{kind="generated"}' in text
    assert "dynasor_programs_total" in text


async def test_metrics_are_bounded_histograms_in_a_registry_per_runtime(
    questions: list[TraceQuestion],
) -> None:
    import numpy as np

    from dynasor_client.runtime import RuntimeMetrics

    async with (
        served(questions[:6]) as (_, endpoint),
        Runtime(endpoint) as runtime,
        Runtime(endpoint) as other,
    ):
        runtime.metrics = RuntimeMetrics(recent=4)  # the last 4 latencies kept for exact percentiles
        await runtime.run_batch([sc(q) for q in questions[:6]], progress=False)
        await other.run_batch([sc(questions[0])], progress=False)
    metrics = runtime.metrics
    assert len(metrics.latencies) == 4 and len(metrics.fairness) <= 4  # bounded: 6 programs ran
    recent = list(metrics.latencies)
    d = metrics.as_dict()
    assert d["programs"] == 6 and d["latency_p50_s"] == pytest.approx(float(np.percentile(recent, 50)))
    assert d["latency_p90_s"] == pytest.approx(float(np.percentile(recent, 90)))
    assert d["latency_mean_s"] is not None and d["latency_mean_s"] > 0  # over all 6, from the histogram
    assert d["finish_time_fairness_max"] is None or d["finish_time_fairness_max"] >= 1.0
    text = metrics.prometheus()
    assert "dynasor_program_latency_seconds_count 6.0" in text
    assert 'dynasor_program_latency_seconds_bucket{le="+Inf"} 6.0' in text
    assert "dynasor_finish_time_fairness_bucket" in text and "dynasor_deadline_attainment" in text
    # Each runtime counts into its own registry, though both live in one process.
    assert other.metrics.outcomes.total() == 1 and metrics.outcomes.total() == 6
    assert "dynasor_program_latency_seconds_count 1.0" in other.metrics.prometheus()
    assert metrics.tokens["generated"] > other.metrics.tokens["generated"] > 0
    assert metrics.requests > other.metrics.requests >= 1
