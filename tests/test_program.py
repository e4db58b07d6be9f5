"""The program boundary: binding an algorithm to its query, where it runs, one stop check, one
deadline meaning (standalone and under the runtime, on the loop clock), rules that carry reasons."""

from __future__ import annotations

import asyncio

import pytest

from dynasor_client import Endpoint, Runtime, as_program
from dynasor_client.algorithms import self_consistency
from dynasor_client.certainty import Observations, cap, entropy_at_least, hopeless, token_budget
from dynasor_client.program import ProgramContext, ProgramResult, StopReason
from dynasor_client.traces import TraceQuestion
from tests.support.replay import replay_endpoint, traces_or_skip


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")


def test_where_a_program_runs_is_not_the_algorithms() -> None:
    for misplaced in ({"deadline_s": 5}, {"token_budget": 100}, {"endpoint": None}, {"context": None}):
        with pytest.raises(TypeError, match=next(iter(misplaced))):
            as_program(self_consistency, "q", **misplaced)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nn'"):
        as_program(self_consistency, "q", nn=3)  # a typo fails when bound, not when run


async def test_options_a_context_would_drop_are_an_error(svamp: list[TraceQuestion]) -> None:
    async with replay_endpoint(svamp[:5]) as endpoint:
        context = ProgramContext(endpoint)
        with pytest.raises(TypeError, match="deadline_s"):
            await self_consistency(svamp[0].question, context=context, deadline_s=5)
        with pytest.raises(TypeError, match="as_program"):
            await self_consistency(svamp[0].question)


async def test_endpoint_still_runs_an_algorithm_with_a_deprecation_warning(
    svamp: list[TraceQuestion],
) -> None:
    q = svamp[0]
    async with replay_endpoint(svamp[:5], seed=1) as endpoint:
        expected = await as_program(self_consistency, q.question, n=6, rounds=[3, 3]).run(endpoint)
    async with replay_endpoint(svamp[:5], seed=1) as endpoint:
        with pytest.warns(DeprecationWarning, match="as_program"):
            shim = await self_consistency(q.question, endpoint=endpoint, n=6, rounds=[3, 3])
    assert shim.answers == expected.answers and shim.stop_reason == expected.stop_reason


def test_a_deadline_means_the_same_alone_and_under_the_runtime(svamp: list[TraceQuestion]) -> None:
    # One round of 30 samples takes longer than the deadline (modelled H100 time on a virtual
    # clock): alone and under the runtime, the program is cancelled at the deadline and returns
    # its best answer so far (none yet), flagged partial.
    from dynasor_client.replay import InProcessReplay, run_virtual

    question = svamp[0].question

    async def run(under_runtime: bool) -> tuple[ProgramResult, float]:
        loop = asyncio.get_running_loop()
        program = as_program(self_consistency, question, n=30, rounds="one")
        async with InProcessReplay(svamp[:5], seed=3) as replay, replay.endpoint() as endpoint:
            await asyncio.sleep(100.0)  # virtual time: a deadline is relative to now, not to the clock's zero
            started = loop.time()
            if under_runtime:
                async with Runtime(endpoint) as runtime:
                    result = await runtime.submit(program, deadline_s=0.25)
            else:
                result = await program.run(endpoint, deadline_s=0.25)
            return result, loop.time() - started

    for under_runtime in (False, True):
        result, took = run_virtual(run(under_runtime))
        assert result.stop_reason is StopReason.DEADLINE and result.partial, under_runtime
        assert took == pytest.approx(0.25, abs=1e-3), under_runtime


async def test_budget_stops_alone_as_under_the_runtime(svamp: list[TraceQuestion]) -> None:
    q = svamp[0]
    program = as_program(self_consistency, q.question, n=30, rounds=[2] * 15, rule=cap(30))
    async with replay_endpoint(svamp[:5], seed=2) as endpoint:
        alone = await program.run(endpoint, token_budget=400)
    async with replay_endpoint(svamp[:5], seed=2) as endpoint, Runtime(endpoint, program_tokens=400) as rt:
        managed = await rt.submit(program)
    assert alone.stop_reason is managed.stop_reason is StopReason.BUDGET
    assert alone.answers == managed.answers
    # Each request reserves its most tokens before it is sent: the budget holds (but for the prompt
    # estimate's error of a request in flight), alone as under the runtime.
    assert alone.tokens.total <= 400 + 32 and managed.tokens.total <= 400 + 32


def test_each_rule_carries_its_reason() -> None:
    agree = Observations.single([0, 0, 0, 0, 0])
    split = Observations.single([0, 1, 2, 3, 4])
    rule = cap(5) | entropy_at_least(0.7, at=[5]) | hopeless(5, 0.3)
    assert rule.fired(agree) == "cap"  # the first part that fires
    assert (entropy_at_least(0.7, at=[5]) | cap(5)).fired(agree) == "confident"
    assert (hopeless(5, 0.3) | cap(5)).fired(split) == "hopeless"
    assert (entropy_at_least(0.7, at=[5]) | hopeless(5, 0.3)).fired(split) == "hopeless"
    assert entropy_at_least(0.7, at=[5]).fired(split) is None
    assert (entropy_at_least(0.7, at=[5]) & cap(5)).fired(agree) == "confident"  # AllOf: the first part's
    assert (entropy_at_least(0.7, at=[5]) & cap(5)).fired(split) is None
    tokens = Observations.single([0, 1], tokens=[60, 60])
    assert (token_budget(100) | cap(5)).fired(tokens) == "budget"


async def test_the_stop_check_order_is_deadline_rule_budget(svamp: list[TraceQuestion]) -> None:
    async with replay_endpoint(svamp[:5]) as endpoint:
        agree = Observations.single([0, 0, 0, 0, 0])
        context = ProgramContext(endpoint, token_budget=1)
        context.bind(cap(5))
        context.usage.generated = 10  # over budget and at the cap: the rule speaks first
        assert context.stop_reason(agree) is StopReason.CAP
        context.bind(cap(6))
        assert context.stop_reason(agree) is StopReason.BUDGET
        context.deadline = context.clock() - 1.0
        assert context.stop_reason(agree) is StopReason.DEADLINE


async def test_a_context_can_be_watched(svamp: list[TraceQuestion]) -> None:
    seen: list[int] = []
    points: list[float] = []
    async with replay_endpoint(svamp[:5]) as endpoint:
        context = ProgramContext(endpoint)
        context.watch(
            on_generation=lambda kind, generation: seen.append(len(generation.choices)),
            on_report=lambda point: points.append(point.value),
        )
        result = await self_consistency(svamp[0].question, context=context, n=4, rounds=[2, 2], rule=cap(4))
    assert sum(seen) == len(result.answers) == 4 and len(points) == result.steps >= 1


def test_a_context_outside_a_loop() -> None:
    # A context built outside a loop (a notebook cell, a test) still has a clock.
    context = ProgramContext(Endpoint("http://127.0.0.1:9"))
    assert context.seconds_left() is None and context.tokens_left() is None
