"""Self-consistency end to end: over HTTP against the replay engine (real Codex samples) and SmolLM2."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dynasor_client import Endpoint, SamplingParams, as_program
from dynasor_client.algorithms import (
    Prompting,
    RoundPlan,
    round_sizes,
    self_consistency,
    self_consistency_rule,
)
from dynasor_client.certainty import (
    BayesianAgreement,
    EntropyCertainty,
    Observations,
    Threshold,
    cap,
    cluster_answers,
    entropy_at_least,
    get_extractor,
)
from dynasor_client.program import ProgramResult, StandaloneContext, StopReason
from dynasor_client.traces import TraceQuestion
from tests.support.replay import replay_endpoint, traces_or_skip


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")


@pytest.fixture
async def replay(svamp: list[TraceQuestion]) -> AsyncIterator[Endpoint]:
    async with replay_endpoint(svamp[:40], seed=3) as endpoint:
        yield endpoint


class _NoBound:
    """A signal that claims no bound on what the samples to come may bring: the program running
    its rule consults every check (none is skipped)."""

    def best_case(self, obs: Observations, count: int) -> np.ndarray:
        return np.ones(obs.shape[0])


class _UnboundedEntropy(_NoBound, EntropyCertainty):
    pass


class _UnboundedAgreement(_NoBound, BayesianAgreement):
    pass


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


class _Draws:
    """Rounds that take ``round_s`` modelled seconds each (virtual clock; a list: per round, in the
    order sent); records what was sent (sizes, and each request's first sample), what was cancelled,
    and how many rounds ran at once."""

    def __init__(self, round_s: float | list[float], fail: set[int] | None = None) -> None:
        self.round_s, self.fail = round_s, fail or set()
        self.sent: list[int] = []
        self.firsts: list[int] = []
        self.cancelled: list[int] = []
        self.running = self.most_at_once = 0

    async def __call__(self, first: int, size: int) -> SimpleNamespace:
        index = len(self.sent)
        self.sent.append(size)
        self.firsts.append(first)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.round_s if isinstance(self.round_s, float) else self.round_s[index])
        except asyncio.CancelledError:
            self.cancelled.append(index)
            raise
        finally:
            self.running -= 1
        if index in self.fail:
            raise RuntimeError(f"request {index} failed")
        return SimpleNamespace(choices=[index] * size)  # a Generation's choices, by request


class _SharedContext(StandaloneContext):
    """A standalone context as if other programs filled its runtime's window while ``busy(now)``."""

    def __init__(self, *args: Any, busy: Callable[[float], bool], **options: Any) -> None:
        super().__init__(*args, **options)
        self._busy = busy

    def saturated(self) -> bool:
        return self._busy(self.clock())


def _walk(
    planned: list[int],
    draws: _Draws,
    *,
    deadline_s: float | None = None,
    stop_after: int | None = None,
    busy: Callable[[float], bool] = lambda now: False,
    **options: float,
) -> tuple[RoundPlan, list[int], float]:
    """Read the plan's rounds on the virtual clock (stopping after ``stop_after`` rounds, as a
    program whose rule fires): the plan, the results read, and the modelled seconds taken."""
    from dynasor_client.replay import run_virtual

    async def main() -> tuple[RoundPlan, list[int], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        context = _SharedContext(
            Endpoint("http://127.0.0.1:9"),
            cap(30),
            deadline_s=deadline_s,
            busy=lambda now: busy(now - started),
        )
        plan = RoundPlan(planned, context, **options)  # type: ignore[arg-type]
        read: list[int] = []
        async with plan.rounds(draws) as results:  # type: ignore[arg-type]
            async for choices in results:
                read.append(len(choices))
                if len(read) == stop_after:
                    break
        return plan, read, loop.time() - started

    return run_virtual(main())


def test_round_plan_without_a_deadline_sends_one_round_at_a_time() -> None:
    draws = _Draws(3.0)
    plan, read, took = _walk([4, 2, 2, 4], draws)
    assert read == [4, 2, 2, 4] and draws.sent == read and draws.most_at_once == 1
    assert took == pytest.approx(12.0) and not plan.out_of_time and plan.ahead == 0
    # A rule that fires after the second round: nothing more is drawn.
    draws = _Draws(3.0)
    plan, read, _ = _walk([4, 2, 2, 4], draws, stop_after=2)
    assert read == [4, 2] and draws.sent == [4, 2] and draws.cancelled == []


def test_round_plan_with_a_deadline_sends_ahead_and_cancels_what_is_not_needed() -> None:
    # Ample time, lookahead 4: 4 samples past the current check are in flight (requests of 4, 2, 2 at once; a
    # bigger next round goes out in parts), and the rounds still come in the planned order.
    draws = _Draws(3.0)
    plan, read, took = _walk([4, 2, 2, 4, 4], draws, deadline_s=100.0, lookahead=4)
    assert read == [4, 2, 2, 4, 4] and draws.sent == [4, 2, 2, 2, 2, 4]
    assert draws.firsts == [0, 4, 6, 8, 10, 12]  # each request names its first sample (its seeds)
    assert draws.most_at_once == 3 and took == pytest.approx(6.0) and plan.ahead == 0
    # The rule fires after the first round: the requests sent ahead are cancelled (aborted on the server).
    draws = _Draws([3.0, 4.0, 4.0])
    plan, read, took = _walk([4, 2, 2, 4, 4], draws, deadline_s=100.0, stop_after=1, lookahead=4)
    assert read == [4] and draws.sent == [4, 2, 2] and sorted(draws.cancelled) == [1, 2]
    assert took == pytest.approx(3.0) and plan.sent == [4, 2, 2]
    # A big next round: only the lookahead's 2 (the default) of its 25 samples go out ahead.
    draws = _Draws([3.0, 4.0])
    plan, read, _ = _walk([5, 25], draws, deadline_s=100.0, stop_after=1)
    assert read == [5] and draws.sent == [5, 2] and draws.cancelled == [1]
    # No lookahead asked: one round at a time, deadline or not.
    draws = _Draws(3.0)
    _walk([4, 2, 2], draws, deadline_s=100.0, lookahead=0)
    assert draws.most_at_once == 1


def test_round_plan_fits_the_deadline() -> None:
    # 10 s, 3 s a round, margin 1.25: after the first, 7 s hold one round of 3 x 1.25 s: the rest go
    # out together (one request per round, so the program can still stop at any of their checks).
    draws = _Draws(3.0)
    plan, read, took = _walk([5, 5, 5, 5, 10], draws, deadline_s=10.0, lookahead=0, margin=1.25)
    assert read == [5, 5, 5, 5, 10] and took == pytest.approx(6.0) and draws.sent == [5, 5, 5, 5, 10]
    assert plan.ahead == 20 and not plan.out_of_time and draws.most_at_once == 4
    # With the default margin, 1: two rounds fit, so the remaining four go out two at a time.
    draws = _Draws(3.0)
    plan, read, took = _walk([5, 5, 5, 5, 10], draws, deadline_s=10.0, lookahead=0)
    assert read == [5, 5, 5, 5, 10] and took == pytest.approx(9.0) and draws.most_at_once == 2
    # 6 s a round: after the first, no new round fits; the two sent ahead are expected by 7.5 s
    # (6 x 1.25), within the 10 s, so they are read, and then the plan ends with the samples it has.
    draws = _Draws([6.0, 7.0, 7.0])
    plan, read, took = _walk([4, 2, 2, 4], draws, deadline_s=10.0, lookahead=4, margin=1.25)
    assert read == [4, 2, 2] and plan.out_of_time and took == pytest.approx(7.0)
    assert draws.sent == [4, 2, 2]
    # Requests sent ahead that are expected after the deadline are cancelled, not waited for: at 4 s
    # (6 s left, one 5 s round fits) the last two rounds go out; at 5 s requests take 5 s, 6.25 s
    # with the margin, and they have 6 s left.
    draws = _Draws([4.0, 5.0, 5.0, 9.0, 9.0])
    plan, read, took = _walk([4, 2, 2, 4, 4], draws, deadline_s=10.0, lookahead=4, margin=1.25)
    assert read == [4, 2, 2] and plan.out_of_time and took == pytest.approx(5.0)
    assert draws.sent == [4, 2, 2, 4, 4] and draws.cancelled == [3, 4] and plan.ahead == 6
    with pytest.raises(ValueError, match="margin"):
        RoundPlan([5], StandaloneContext(Endpoint("http://127.0.0.1:9"), cap(5)), margin=0.5)
    with pytest.raises(ValueError, match="lookahead"):
        RoundPlan([5], StandaloneContext(Endpoint("http://127.0.0.1:9"), cap(5)), lookahead=-1)


def test_round_plan_sends_nothing_early_while_the_runtime_is_saturated() -> None:
    # Other programs fill the window throughout: one round at a time despite the deadline and the
    # lookahead, as without a deadline.
    draws = _Draws(3.0)
    plan, read, took = _walk([4, 2, 2, 4], draws, deadline_s=100.0, lookahead=4, busy=lambda now: True)
    assert read == [4, 2, 2, 4] and draws.sent == read and draws.most_at_once == 1
    assert took == pytest.approx(12.0) and plan.ahead == 0 and not plan.out_of_time
    # Nor are rounds sent together to fit the deadline (unsaturated, the last four would go out at
    # 3 s, as in the test above); the plan still ends once the next round is expected late: at 9 s
    # 1 s is left and a round takes 3 s.
    draws = _Draws(3.0)
    plan, read, took = _walk([5, 5, 5, 5, 10], draws, deadline_s=10.0, lookahead=0, busy=lambda now: True)
    assert read == [5, 5, 5] and draws.sent == [5, 5, 5] and draws.most_at_once == 1
    assert took == pytest.approx(9.0) and plan.out_of_time and plan.ahead == 0
    # Saturated only during the first round: the lookahead resumes once the window has room.
    draws = _Draws(3.0)
    plan, read, took = _walk([4, 2, 2, 4], draws, deadline_s=100.0, lookahead=2, busy=lambda now: now < 2.0)
    assert read == [4, 2, 2, 4] and draws.sent == [4, 2, 2, 2, 2] and took == pytest.approx(9.0)


def test_round_plan_skips_checks_the_rule_cannot_pass() -> None:
    # The rule could not stop the program at 6 or 8 samples: those rounds go out with the 12's, in
    # one request, and the program reads them at once (two rounds instead of four).
    draws = _Draws(3.0)
    plan, read, took = _walk([4, 2, 2, 4], draws, may_stop=lambda count: count not in (6, 8))  # type: ignore[arg-type]
    assert read == [4, 8] and draws.sent == [4, 8] and took == pytest.approx(6.0) and plan.skipped == 2
    # With a lookahead: the 2 samples sent ahead of the first check, then the rest of the 12.
    draws = _Draws(3.0)
    plan, read, took = _walk(
        [4, 2, 2, 4],
        draws,
        deadline_s=100.0,
        lookahead=2,
        may_stop=lambda count: count not in (6, 8),  # type: ignore[arg-type]
    )
    assert read == [4, 8] and draws.sent == [4, 2, 6] and took == pytest.approx(6.0)


def test_a_contested_program_skips_checks_it_cannot_pass(svamp: list[TraceQuestion]) -> None:
    # Adaptive-Consistency checks after every sample. On a contested question most checks cannot
    # fire whatever comes next, so the program skips them: the same samples, answer and stop in
    # far fewer rounds than the rule's checks (a signal that cannot rule checks out skips none).
    from dynasor_client.replay import InProcessReplay, run_virtual

    question = next(q for q in svamp[:40] if _agreement(q, 30) <= 12)

    async def run(signal: BayesianAgreement) -> ProgramResult:
        async with InProcessReplay(svamp[:40], seed=3) as replay, replay.endpoint() as endpoint:
            rule = Threshold(signal, 0.95, min_obs=2)
            context = StandaloneContext(endpoint, rule, program_id="skip-1")  # the same draws each run
            return await self_consistency(question.question, context=context, n=30, rule=rule)

    every = run_virtual(run(_UnboundedAgreement()))
    skipping = run_virtual(run(BayesianAgreement()))
    assert list(map(str, skipping.answers)) == list(map(str, every.answers))
    assert skipping.stop_reason is every.stop_reason and skipping.answer == every.answer
    assert every.steps == len(every.answers) - 1  # checked at 2, 3, ..., every sample
    assert skipping.steps <= every.steps // 3


def test_round_plan_failures() -> None:
    # A request the program reads fails with its own error (not an exception group).
    with pytest.raises(RuntimeError, match="request 1 failed"):
        _walk([4, 2, 2], _Draws(3.0, fail={1}), deadline_s=100.0)
    # A request sent ahead that the program never reads cannot fail it.
    draws = _Draws(3.0, fail={1})
    _, read, _ = _walk([4, 2, 2], draws, deadline_s=100.0, stop_after=1)
    assert read == [4]


def test_deadline_fits_the_rounds_of_a_live_program(svamp: list[TraceQuestion]) -> None:
    # A rule that checks every 5 samples on a contested question: six rounds alone (its signal
    # cannot rule a check out, so none is skipped). Half that time as the deadline: the program
    # sends rounds ahead and draws the same 30 samples, checking after each round as before, in
    # time (modelled H100 time).
    from dynasor_client.replay import InProcessReplay, run_virtual

    question = next(q for q in svamp[:40] if _agreement(q, 30) <= 10)
    rule = self_consistency_rule(Threshold(_UnboundedEntropy(), 0.95, every=5, min_obs=2), 30, 5)
    planned = round_sizes("auto", 30, rule=rule)
    assert planned == [5] * 6

    async def run(deadline_s: float | None) -> tuple[ProgramResult, float, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        async with InProcessReplay(svamp[:40], seed=3) as replay, replay.endpoint() as endpoint:
            context = StandaloneContext(endpoint, rule, program_id="split-1", deadline_s=deadline_s)
            started = loop.time()
            result = await self_consistency(question.question, context=context, n=30, rule=rule)
            took = loop.time() - started
            await asyncio.sleep(1.0)  # let the engine take in any abort
            return result, took, replay.metrics()

    alone, alone_s, _ = run_virtual(run(None))
    assert alone.stop_reason is StopReason.CAP and alone.steps == len(planned)
    fitted, fitted_s, _ = run_virtual(run(alone_s / 2))
    assert fitted.stop_reason is StopReason.CAP and not fitted.partial
    assert len(fitted.answers) == 30 and fitted.steps == alone.steps
    assert list(map(str, fitted.answers)) == list(map(str, alone.answers))  # the same samples, in order
    assert fitted_s <= alone_s / 2
    # Too little time for a second round: the detect round's answer, now, not at the deadline;
    # the part of the second round sent ahead is aborted on the server.
    first_round_s = alone.certaindex[0].elapsed_s
    cut, cut_s, metrics = run_virtual(run(first_round_s * 1.5))
    assert cut.stop_reason is StopReason.DEADLINE and cut.partial
    assert len(cut.answers) == planned[0] and cut_s < first_round_s * 1.5
    assert metrics["running"] == 0


def test_a_confident_program_aborts_the_rounds_it_sent_ahead(svamp: list[TraceQuestion]) -> None:
    # All six rounds go out at once (lookahead 25); the rule fires on the first: the other requests
    # are cancelled and the replay engine aborts them, so it stops generating for this program.
    from dynasor_client.replay import InProcessReplay, run_virtual

    question = next(
        q for q in svamp[:40] if _agreement(q, 30) == 30 and len({s.num_tokens for s in q.samples}) > 3
    )
    rule = self_consistency_rule(entropy_at_least(0.95, every=5), 30, 5)

    async def run() -> tuple[ProgramResult, dict[str, Any]]:
        async with InProcessReplay(svamp[:40], seed=3) as replay, replay.endpoint() as endpoint:
            context = StandaloneContext(endpoint, rule, program_id="ahead-1", deadline_s=1e6)
            result = await self_consistency(question.question, context=context, n=30, rule=rule, lookahead=25)
            await asyncio.sleep(1.0)
            return result, replay.metrics()

    result, metrics = run_virtual(run())
    assert result.stop_reason is StopReason.CONFIDENT and len(result.answers) == 5
    assert metrics["submitted"] == 30 and metrics["aborted"] >= 1 and metrics["running"] == 0
    assert metrics["tokens_generated"] < sum(s.num_tokens for s in question.samples)


def test_under_a_full_runtime_window_nothing_is_sent_ahead(svamp: list[TraceQuestion]) -> None:
    # The same confident program under the runtime, arriving while another program's 30 samples
    # are in flight: with room in the window it sends the next round's first 2 samples along with
    # its detect round (wasted: the rule fires on the detect round); when the other program fills
    # the window, it sends nothing before its turn, so the engine gets only the 5 samples it reads.
    from dynasor_client import Runtime, as_program
    from dynasor_client.replay import InProcessReplay, run_virtual

    question = next(
        q for q in svamp[:40] if _agreement(q, 30) == 30 and len({s.num_tokens for s in q.samples}) > 3
    )
    rule = self_consistency_rule(entropy_at_least(0.95, every=5), 30, 5)

    async def run(window: int) -> tuple[ProgramResult, dict[str, Any]]:
        async with (
            InProcessReplay(svamp[:40], seed=3) as replay,
            replay.endpoint() as endpoint,
            Runtime(endpoint, window=window) as runtime,
        ):
            other = runtime.submit(
                as_program(self_consistency, svamp[0].question, n=30, rule=cap(30), rounds=[30])
            )
            await asyncio.sleep(0.01)  # the other program's request is in flight
            program = as_program(self_consistency, question.question, n=30, rule=rule)
            result = await runtime.run(program, deadline_s=1e6, program_id="ahead-2")
            await other
            await asyncio.sleep(1.0)
            return result, replay.metrics()

    roomy, roomy_metrics = run_virtual(run(64))
    full, full_metrics = run_virtual(run(30))
    for result in (roomy, full):
        assert result.stop_reason is StopReason.CONFIDENT and len(result.answers) == 5
    assert roomy_metrics["submitted"] == 30 + 7 and full_metrics["submitted"] == 30 + 5


async def test_unanimous_question_stops_at_the_detect_round(
    replay: Endpoint, svamp: list[TraceQuestion]
) -> None:
    # A question all 30 recorded samples agree on: the paper's rule stops after 5.
    question = next(q for q in svamp[:40] if _agreement(q, 30) == 30)
    result = await as_program(self_consistency, question.question, n=30).run(replay)
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
    result = await as_program(self_consistency, question.question, n=30, rounds="one").run(
        replay, token_budget=150
    )
    assert result.stop_reason is StopReason.BUDGET
    # Requests reserve their most tokens first: the budget holds (up to a prompt estimate's error).
    assert 100 <= result.tokens.total <= 150 + 32 and len(result.answers) < 30


async def test_runs_on_the_local_model(local_endpoint: Endpoint) -> None:
    # SmolLM2-135M answers all over the place: the mechanics, not the accuracy.
    result = await as_program(
        self_consistency,
        "Tom has 27 apples and buys 21 more. How many apples does he have?",
        n=8,
        detect=4,
        params=SamplingParams(temperature=0.8, max_tokens=48, seed=1),
    ).run(local_endpoint)
    assert len(result.answers) in (4, 8)
    assert result.stop_reason in (StopReason.CONFIDENT, StopReason.CAP)
    assert result.tokens.generated > 0 and result.tokens.prompt > 0
    assert all(0.0 <= p.value <= 1.0 for p in result.certaindex)


async def test_a_seeded_program_draws_new_samples_each_round(local_endpoint: Endpoint) -> None:
    # llama.cpp, like vLLM, repeats a seeded request's samples. Sample i of a seeded program is drawn
    # with seed + i, so the second round draws what a request seeded 3 + 2 draws, not the first
    # round again (which would make a seeded program sure of whatever it drew first).
    question = "Tom has 27 apples and buys 21 more. How many apples does he have? Explain."
    params = SamplingParams(temperature=1.0, max_tokens=32, seed=3)
    result = await as_program(
        self_consistency,
        question,
        n=4,
        rounds=[2, 2],
        rule=cap(4),
        params=params,
        prompting=Prompting(system=None),
        # a token limit: the check after the first round stays,
    ).run(local_endpoint, token_budget=10**6)  # fmt: skip
    assert result.steps == 2
    chat = [{"role": "user", "content": question}]
    first = await local_endpoint.chat(chat, n=2, params=params)
    second = await local_endpoint.chat(chat, n=2, params=params.for_sample(2))
    assert [c.text for c in second.choices] != [c.text for c in first.choices]
    extract = get_extractor("math")
    assert list(result.answers) == [extract(c.text) for c in (*first.choices, *second.choices)]


async def test_bad_input_is_refused(replay: Endpoint) -> None:
    with pytest.raises(ValueError, match="n must be"):
        await as_program(self_consistency, "q", n=0).run(replay)
    with pytest.raises(TypeError, match="as_program"):
        await self_consistency("q")
