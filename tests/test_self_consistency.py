"""Self-consistency end to end: over HTTP against the replay engine (real Codex samples) and SmolLM2."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dynasor_client import Endpoint, SamplingParams
from dynasor_client.algorithms import (
    ProgramResult,
    RoundPlan,
    StandaloneContext,
    StopReason,
    round_sizes,
    self_consistency,
    self_consistency_rule,
)
from dynasor_client.certainty import cap, cluster_answers, entropy_at_least
from dynasor_client.traces import TraceQuestion
from tests.support.replay import replay_endpoint, traces_or_skip


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")


@pytest.fixture
async def replay(svamp: list[TraceQuestion]) -> AsyncIterator[Endpoint]:
    async with replay_endpoint(svamp[:40], seed=3) as endpoint:
        yield endpoint


def _agreement(question: TraceQuestion, k: int) -> int:
    labels = cluster_answers([s.answer for s in question.samples[:k]])
    return max(labels.count(label) for label in set(labels))


def test_round_schedules() -> None:
    assert round_sizes("auto", 30, rule=cap(30) | entropy_at_least(0.7, at=[5])) == [5, 25]
    assert round_sizes("auto", 12, rule=cap(12) | entropy_at_least(0.9, every=4)) == [4, 4, 4]
    assert round_sizes("detect", 30) == [5, 25]
    assert round_sizes("doubling", 30) == [5, 10, 15]
    assert round_sizes("one", 3) == [1, 1, 1]
    assert round_sizes([4, 4], 10) == [4, 4, 2]
    with pytest.raises(ValueError, match="round schedule"):
        round_sizes("halving", 10)


class _Clock:
    """A clock the test moves: each round of a plan 'takes' ``round_s`` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _walk(plan: RoundPlan, clock: _Clock, round_s: float) -> list[int]:
    sizes = []
    for size in plan:
        sizes.append(size)
        clock.now += round_s
    return sizes


def test_round_plan_fits_the_deadline() -> None:
    endpoint, rule, planned = Endpoint("http://127.0.0.1:9"), cap(30), [5, 5, 5, 5, 10]
    clock = _Clock()
    free = StandaloneContext(endpoint, rule, clock=clock)
    assert _walk(RoundPlan(planned, free), clock, 3.0) == planned  # no deadline: the plan as is
    # 10 s, 3 s a round: after the first, two rounds fit, so the last four merge into two.
    clock = _Clock()
    context = StandaloneContext(endpoint, rule, deadline_s=10.0, clock=clock)
    plan = RoundPlan(planned, context, margin=1.0)
    assert _walk(plan, clock, 3.0) == [5, 5, 20] and plan.merged == 2 and not plan.out_of_time
    # The default margin expects the next round to last 1.25x the last one: one fits, not two.
    clock = _Clock()
    plan = RoundPlan(planned, StandaloneContext(endpoint, rule, deadline_s=10.0, clock=clock))
    assert _walk(plan, clock, 3.0) == [5, 25] and plan.merged == 3
    # 6 s a round: after the first, no round fits: the plan ends with the samples it has.
    clock = _Clock()
    plan = RoundPlan(planned, StandaloneContext(endpoint, rule, deadline_s=10.0, clock=clock))
    assert _walk(plan, clock, 6.0) == [5] and plan.out_of_time
    # Ample time: nothing changes.
    clock = _Clock()
    plan = RoundPlan(planned, StandaloneContext(endpoint, rule, deadline_s=100.0, clock=clock))
    assert _walk(plan, clock, 3.0) == planned and plan.merged == 0
    with pytest.raises(ValueError, match="margin"):
        RoundPlan(planned, free, margin=0.5)


def test_deadline_merges_rounds_of_a_live_program(svamp: list[TraceQuestion]) -> None:
    # A rule that checks every 5 samples on a contested question: six rounds alone. Half that
    # time as the deadline makes the program draw the same 30 samples in fewer rounds, in time
    # (modelled H100 time).
    from dynasor_client.replay import InProcessReplay, run_virtual

    question = next(q for q in svamp[:40] if _agreement(q, 30) <= 10)
    rule = self_consistency_rule(entropy_at_least(0.95, every=5), 30, 5)
    planned = round_sizes("auto", 30, rule=rule)
    assert planned == [5] * 6

    async def run(deadline_s: float | None) -> tuple[ProgramResult, float]:
        loop = asyncio.get_running_loop()
        async with InProcessReplay(svamp[:40], seed=3) as replay, replay.endpoint() as endpoint:
            context = StandaloneContext(
                endpoint, rule, program_id="split-1", deadline_s=deadline_s, clock=loop.time
            )
            started = loop.time()
            result = await self_consistency(question.question, context=context, n=30, rule=rule)
            return result, loop.time() - started

    alone, alone_s = run_virtual(run(None))
    assert alone.stop_reason is StopReason.CAP and alone.steps == len(planned)
    fitted, fitted_s = run_virtual(run(alone_s / 2))
    assert fitted.stop_reason is StopReason.CAP and not fitted.partial
    assert len(fitted.answers) == 30 and fitted.steps < alone.steps
    assert sorted(map(str, fitted.answers)) == sorted(map(str, alone.answers))  # the same samples
    assert fitted_s <= alone_s / 2
    # Too little time for a second round: the detect round's answer, now, not at the deadline.
    first_round_s = alone.certaindex[0].elapsed_s
    cut, cut_s = run_virtual(run(first_round_s * 1.5))
    assert cut.stop_reason is StopReason.DEADLINE and cut.partial
    assert len(cut.answers) == planned[0] and cut_s < first_round_s * 1.5


async def test_unanimous_question_stops_at_the_detect_round(
    replay: Endpoint, svamp: list[TraceQuestion]
) -> None:
    # A question all 30 recorded samples agree on: the paper's rule stops after 5.
    question = next(q for q in svamp[:40] if _agreement(q, 30) == 30)
    result = await self_consistency(question.question, endpoint=replay, n=30)
    assert result.stop_reason is StopReason.CONFIDENT
    assert len(result.answers) == 5 and result.steps == 1
    assert result.certaindex[0].value == 1.0
    assert cluster_answers([result.answer, question.samples[0].answer]) == [0, 0]
    longest_five = sorted(s.num_tokens for s in question.samples)[-5:]
    assert 0 < result.tokens.generated <= sum(longest_five)


async def test_split_question_runs_to_the_cap(replay: Endpoint, svamp: list[TraceQuestion]) -> None:
    question = next(q for q in svamp[:40] if _agreement(q, 30) <= 20)
    # A fixed program id fixes the sample order (a random one made the detect round agree by chance).
    context = StandaloneContext(replay, self_consistency_rule("paper", 30, 5), program_id="split-0")
    result = await self_consistency(question.question, context=context, n=30)
    assert result.stop_reason is StopReason.CAP
    assert len(result.answers) == 30 and result.steps == 2
    assert result.certaindex[0].value < 0.7  # uncertain at the detect round
    # Drawn without replacement: all 30 recorded samples, so the vote is the recorded majority.
    recorded = [s.answer for s in question.samples]
    assert sorted(map(str, result.answers)) == sorted(map(str, recorded))
    assert result.tokens.generated == sum(s.num_tokens for s in question.samples)


async def test_deterministic_under_seed(svamp: list[TraceQuestion]) -> None:
    question = next(q for q in svamp[:40] if _agreement(q, 30) <= 25)
    rule = cap(12) | entropy_at_least(0.9, every=4)
    runs = []
    for _ in range(2):  # a fresh server each time: the same seed and program draw the same samples
        async with replay_endpoint(svamp[:40], seed=7) as endpoint:
            context = StandaloneContext(endpoint, rule, program_id="prog-fixed")
            runs.append(await self_consistency(question.question, context=context, n=12, rounds=[4, 4, 4]))
    assert runs[0].answers == runs[1].answers
    assert runs[0].tokens.generated == runs[1].tokens.generated
    assert runs[0].stop_reason == runs[1].stop_reason


async def test_token_budget_stops_the_program(replay: Endpoint, svamp: list[TraceQuestion]) -> None:
    question = next(q for q in svamp[:40] if _agreement(q, 30) <= 20)
    result = await self_consistency(question.question, endpoint=replay, n=30, rounds="one", token_budget=150)
    assert result.stop_reason is StopReason.BUDGET
    assert result.tokens.total >= 150 and len(result.answers) < 30


async def test_runs_on_the_local_model(local_endpoint: Endpoint) -> None:
    # SmolLM2-135M answers all over the place: the mechanics, not the accuracy.
    result = await self_consistency(
        "Tom has 27 apples and buys 21 more. How many apples does he have?",
        endpoint=local_endpoint,
        n=8,
        detect=4,
        params=SamplingParams(temperature=0.8, max_tokens=48, seed=1),
    )
    assert len(result.answers) in (4, 8)
    assert result.stop_reason in (StopReason.CONFIDENT, StopReason.CAP)
    assert result.tokens.generated > 0 and result.tokens.prompt > 0
    assert all(0.0 <= p.value <= 1.0 for p in result.certaindex)


async def test_bad_input_is_refused(replay: Endpoint) -> None:
    with pytest.raises(ValueError, match="n must be"):
        await self_consistency("q", endpoint=replay, n=0)
    with pytest.raises(ValueError, match="endpoint"):
        await self_consistency("q")
