"""Racing rounds (``reading="finishing"``) over HTTP against the replay server in real time: samples
are read as they finish, the program stops as soon as its rule fires on them, and the samples still
running are cancelled and aborted on the server. MATH traces: their samples' lengths differ by tens
of tokens, so the order they finish in does not depend on when each request reached the server.
Last, ``bench racing`` (both readings, same draws, per dataset) on GSM8K's 8 questions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dynasor_client import Endpoint, SamplingParams
from dynasor_client.algorithms import RoundPlan, self_consistency, self_consistency_rule
from dynasor_client.algorithms._rounds import chat_draw
from dynasor_client.benchmarks import RacingConfig, run_racing_benchmark
from dynasor_client.certainty import StopRule, cap, cluster_answers, entropy_at_least
from dynasor_client.cli import main
from dynasor_client.program import ProgramResult, StandaloneContext, StopReason
from dynasor_client.replay import ReplayEngine, ReplayServer
from dynasor_client.traces import TraceQuestion
from tests.support.replay import TRACES, traces_or_skip

SEED = 5
GAP = 10  # tokens between the lengths whose order is asserted: well above the requests' arrival skew


@pytest.fixture(scope="module")
def math() -> list[TraceQuestion]:
    return traces_or_skip("math-qwen25math-sc8.jsonl")


@contextlib.asynccontextmanager
async def _server(
    questions: list[TraceQuestion], time_scale: float = 1.0
) -> AsyncIterator[tuple[ReplayServer, Endpoint]]:
    async with (
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=time_scale, seed=SEED) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
    ):
        yield server, endpoint


async def _idle(server: ReplayServer, *, within_s: float = 30.0) -> dict[str, Any]:
    """The server's metrics once nothing runs or waits (every request finished or was aborted)."""
    async with asyncio.timeout(within_s):
        while True:
            metrics = dict(server.metrics())
            if not (metrics["running"] or metrics["waiting"]):
                return metrics
            await asyncio.sleep(0.02)  # polling the server's own counters: the observable event


def _drawn(questions: list[TraceQuestion], question: TraceQuestion, program: str, count: int) -> list[int]:
    """Indices of the first ``count`` samples ``program`` draws for ``question`` (the engine's rule)."""
    return ReplayEngine(questions, seed=SEED).draw_order(f"user:{program}", questions.index(question), count)


def _unanimous(q: TraceQuestion) -> bool:
    return len(set(cluster_answers([s.answer for s in q.samples]))) == 1


async def _program(
    endpoint: Endpoint, question: TraceQuestion, program: str, rule: StopRule, n: int, **options: Any
) -> ProgramResult:
    rule = self_consistency_rule(rule, n, 4)
    context = StandaloneContext(endpoint, rule, program_id=program)
    return await self_consistency(question.question, context=context, n=n, rule=rule, **options)


def test_racing_stops_on_the_first_samples_to_finish_and_aborts_the_rest(math: list[TraceQuestion]) -> None:
    # The rule fires at 4 samples; racing sends 4 + 2 single-sample requests, reads the 4 that finish
    # first (the 4 shortest of the 6 drawn) and cancels the 2 still running: the server aborts them.
    program = "race-stop"

    def lengths(q: TraceQuestion) -> list[int]:
        return sorted(q.samples[i].num_tokens for i in _drawn(math, q, program, 6))

    question = next((q for q in math if _unanimous(q) and lengths(q)[4] - lengths(q)[3] >= GAP), None)
    if question is None:
        pytest.skip("no unanimous MATH question with a clear gap after its 4 shortest draws")
    drawn = lengths(question)

    async def main() -> tuple[ProgramResult, dict[str, Any]]:
        async with _server(math) as (server, endpoint):
            rule = entropy_at_least(0.95, at=[4])
            result = await _program(endpoint, question, program, rule, 8, reading="finishing")
            return result, await _idle(server)

    result, metrics = asyncio.run(main())
    assert result.stop_reason is StopReason.CONFIDENT and len(result.answers) == 4
    assert result.tokens.generated == sum(drawn[:4])  # the 4 shortest of the 6 sent
    assert metrics["submitted"] == 6 and metrics["aborted"] == 2 and metrics["running"] == 0
    assert metrics["tokens_generated"] < sum(drawn)  # the 2 longest were cut short on the server


def test_racing_reads_samples_in_finishing_order(math: list[TraceQuestion]) -> None:
    # One round of 8 read to the end: racing reads them shortest first (8 requests of one sample);
    # planned order reads the same 8 draws in the order drawn (one request of 8).
    program = "race-order"

    def gap(q: TraceQuestion) -> int:
        lengths = sorted(q.samples[i].num_tokens for i in _drawn(math, q, program, 8))
        return min(b - a for a, b in itertools.pairwise(lengths))

    question = next((q for q in math if gap(q) >= GAP), None)
    if question is None:
        pytest.skip("no MATH question whose 8 draws differ in length by a clear gap")
    drawn = [question.samples[i].num_tokens for i in _drawn(math, question, program, 8)]

    async def main(reading: Any) -> tuple[list[int], list[int], dict[str, Any]]:
        async with _server(math) as (server, endpoint):
            context = StandaloneContext(endpoint, cap(8), program_id=program)
            plan = RoundPlan([8], context, reading=reading)
            messages = [{"role": "user", "content": question.question}]
            draw = chat_draw(context, messages, SamplingParams(seed=1))
            read: list[int] = []
            async with plan.rounds(draw) as results:
                async for choices in results:
                    read.extend(choice.num_tokens for choice in choices)
            return read, plan.sent, await _idle(server)

    planned, planned_sent, planned_metrics = asyncio.run(main("planned"))
    raced, raced_sent, raced_metrics = asyncio.run(main("finishing"))
    assert planned == drawn and planned_sent == [8]
    assert raced == sorted(drawn) and raced_sent == [1] * 8
    assert planned_metrics["submitted"] == raced_metrics["submitted"] == 8
    assert planned_metrics["aborted"] == raced_metrics["aborted"] == 0


def test_planned_reading_is_the_default(math: list[TraceQuestion]) -> None:
    # reading="planned" is what a program gets without asking: the same samples, order and requests.
    question = next(q for q in math if not _unanimous(q))
    rule = entropy_at_least(0.95, at=[4])

    async def main(**options: Any) -> tuple[ProgramResult, dict[str, Any]]:
        async with _server(math, time_scale=0.0) as (server, endpoint):
            result = await _program(endpoint, question, "race-off", rule, 8, **options)
            return result, await _idle(server)

    default, default_metrics = asyncio.run(main())
    planned, planned_metrics = asyncio.run(main(reading="planned"))
    assert default.answers == planned.answers and len(default.answers) == 8
    assert default.tokens.generated == planned.tokens.generated
    assert default_metrics["submitted"] == planned_metrics["submitted"] == 8


def test_a_bad_reading_is_refused(math: list[TraceQuestion]) -> None:
    async def main() -> None:
        async with _server(math, time_scale=0.0) as (_, endpoint):
            with pytest.raises(ValueError, match="reading must be 'planned' or 'finishing'"):
                await _program(endpoint, math[0], "race-bad", cap(8), 8, reading="fastest")

    asyncio.run(main())


def test_bench_racing_compares_both_readings_on_the_same_draws(tmp_path: Path) -> None:
    # GSM8K's 8 questions, 2 replay seeds: both readings draw the same recorded samples, so a
    # program reading all 8 (n = 8, the rule rarely fires on a 0.5B model) reads the same tokens;
    # racing answers no later alone, and the GPU generated at least what the programs read.
    traces = TRACES / "gsm8k-qwen25coder05b-sc8-logprobs.jsonl"
    if not traces.exists():
        pytest.skip(f"recorded traces not found: {traces}")
    out = tmp_path / "racing.json"
    assert main(["bench", "racing", "--traces", str(traces), "--seeds", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    figures = data["datasets"][traces.name]
    assert figures["questions"] == 8 and figures["n"] == 8
    planned, racing = figures["planned"], figures["finishing"]
    assert len(planned["by_seed"]) == len(racing["by_seed"]) == 2
    for f in (planned, racing):
        assert 0 <= f["accuracy"] <= 1 and f["gpu_tokens"] >= f["tokens"] - 1e-9
    assert racing["latency_mean_s"] <= planned["latency_mean_s"]
    assert figures["accuracy_change"] == pytest.approx(racing["accuracy"] - planned["accuracy"])


def test_bench_racing_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seeds >= 1"):
        run_racing_benchmark(RacingConfig(traces=("x.jsonl",), seeds=0))
    with pytest.raises(ValueError, match="cannot read the traces"):
        run_racing_benchmark(RacingConfig(traces=(str(tmp_path / "missing.jsonl"),)))
