"""Best-of-N and the reward-model clients: over HTTP against the replay engine (Qwen2.5-Math samples
with recorded outcome rewards) and, for the judge, the local SmolLM2 server (mechanics only)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest

from dynasor_client import Endpoint, as_program
from dynasor_client.algorithms import round_sizes
from dynasor_client.algorithms._best_of_n import best_of_n, best_of_n_rule
from dynasor_client.algorithms._reward import (
    JudgeRewardModel,
    PoolingRewardModel,
    parse_pooling_scores,
    yes_probability,
)
from dynasor_client.certainty import cap, cluster_answers, majority_vote
from dynasor_client.program import StopReason
from dynasor_client.traces import TraceQuestion
from tests.support.replay import replay_endpoint, traces_or_skip


@pytest.fixture(scope="module")
def questions() -> list[TraceQuestion]:
    return traces_or_skip("math-qwen25math-sc8.jsonl")


@pytest.fixture
async def replay(questions: list[TraceQuestion]) -> AsyncIterator[Endpoint]:
    async with replay_endpoint(questions) as endpoint:
        yield endpoint


def _split(questions: list[TraceQuestion]) -> TraceQuestion:
    """A question whose highest-reward answer is not the majority's (math-70 in this file)."""
    for q in questions:
        answers = [s.answer for s in q.samples]
        best = max(q.samples, key=lambda s: _reward(s.reward)).answer
        if cluster_answers([majority_vote(answers), best]) == [0, 1]:
            return q
    raise AssertionError("no question where best-of-N and the majority differ")


def _reward(value: float | None) -> float:
    assert value is not None
    return value


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


async def test_pooling_returns_the_recorded_reward(replay: Endpoint, questions: list[TraceQuestion]) -> None:
    model = PoolingRewardModel(replay)
    for q in questions[:3]:
        for s in q.samples[:3]:
            scored = await model.score_with_usage(q.question, s.text.split("\n\n"))
            assert scored.scores == [s.reward]
            assert scored.usage is not None and scored.usage.completion_tokens > 0
            assert scored.usage.prompt_tokens == 0


async def test_best_of_n_picks_the_max_reward_answer(
    replay: Endpoint, questions: list[TraceQuestion]
) -> None:
    q = _split(questions)
    result = await as_program(
        best_of_n,
        q.question,
        reward_model=PoolingRewardModel(replay),
        n=8,
        rule=cap(8),
    ).run(replay)
    assert result.stop_reason is StopReason.CAP and len(result.answers) == 8
    rewards = result.details["rewards"]
    # Drawn without replacement: all 8 recorded samples, each scored with its own recorded reward.
    recorded = sorted((str(s.answer), s.reward) for s in q.samples)
    assert sorted(zip(map(str, result.answers), rewards, strict=True)) == recorded
    best = max(q.samples, key=lambda s: _reward(s.reward))
    assert cluster_answers([result.answer, best.answer]) == [0, 0]
    assert result.answers[result.details["best"]] == result.answer
    assert result.tokens.reward > 0  # the replay /pooling reports usage
    expected = sum(_sigmoid(r) for r in rewards) / len(rewards)
    assert result.confidence == pytest.approx(expected)


async def test_weighted_majority(replay: Endpoint, questions: list[TraceQuestion]) -> None:
    for q in [q for q in questions if len(set(cluster_answers([s.answer for s in q.samples]))) > 1][:3]:
        result = await as_program(
            best_of_n,
            q.question,
            reward_model=PoolingRewardModel(replay),
            n=8,
            rule=cap(8),
            aggregate="weighted_majority",
        ).run(replay)
        labels, rewards = result.details["labels"], result.details["rewards"]
        assert labels == cluster_answers(list(result.answers))
        totals: dict[int, float] = {}
        for label, reward in zip(labels, rewards, strict=True):
            if label >= 0:
                totals[label] = totals.get(label, 0.0) + _sigmoid(reward)
        winner = max(totals, key=lambda label: (totals[label], -label))
        first = next(a for a, label in zip(result.answers, labels, strict=True) if label == winner)
        assert result.answer == first


async def test_default_rule_stops_at_detect_when_confident(
    replay: Endpoint, questions: list[TraceQuestion]
) -> None:
    assert round_sizes("auto", 8, rule=best_of_n_rule(8, 4)) == [4, 4]
    # A question every sample gets right with a high reward: the detect round settles it.
    q = next(
        q
        for q in questions
        if len(set(cluster_answers([s.answer for s in q.samples]))) == 1
        and min(_reward(s.reward) for s in q.samples) > 3
    )
    result = await as_program(best_of_n, q.question, reward_model=PoolingRewardModel(replay), n=8).run(replay)
    assert result.stop_reason is StopReason.CONFIDENT
    assert len(result.answers) == 4 and result.steps == 1 and result.confidence >= 0.9


def test_parse_pooling_shapes() -> None:
    assert parse_pooling_scores({"data": [{"data": [[0.2, 0.8], [0.9, 0.1]]}]}) == [0.8, 0.1]
    assert parse_pooling_scores({"data": [{"data": [[1.5], [2.0]]}]}) == [1.5, 2.0]
    assert parse_pooling_scores({"data": [{"data": [0.3, 0.4]}]}) == [0.3, 0.4]
    assert parse_pooling_scores({"data": [{"data": 2.5}]}) == [2.5]
    from dynasor_client import MalformedResponse

    bad: object
    for bad in ({}, {"data": []}, {"data": [{"data": ["x"]}]}, {"data": [{"data": "x"}]}):
        with pytest.raises(MalformedResponse):
            parse_pooling_scores(bad)


def test_yes_probability() -> None:
    assert yes_probability([(" Yes", math.log(0.6)), ("No", math.log(0.2)), ("Maybe", 0.0)]) == pytest.approx(
        0.75
    )
    assert yes_probability([("yes", math.log(0.1)), ("YES", math.log(0.1))]) == 1.0
    assert yes_probability([("Hmm", 0.0)]) == 0.5


async def test_bad_input(replay: Endpoint) -> None:
    model = PoolingRewardModel(replay)
    with pytest.raises(ValueError, match="n must be"):
        await as_program(best_of_n, "q", reward_model=model, n=0).run(replay)
    with pytest.raises(ValueError, match="aggregate"):
        await as_program(best_of_n, "q", reward_model=model, aggregate="mean").run(replay)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="as_program"):
        await best_of_n("q", reward_model=model)
    with pytest.raises(ValueError, match="empty"):
        await model.score("q", [])
    with pytest.raises(ValueError, match="sequence"):
        await model.score("q", "one string")
    with pytest.raises(ValueError, match="template"):
        PoolingRewardModel(replay, template="{question}")
    with pytest.raises(ValueError, match="template"):
        JudgeRewardModel(replay, prompt_template="no fields")


async def test_judge_on_local_model(local_endpoint: Endpoint) -> None:
    judge = JudgeRewardModel(local_endpoint)
    scored = await judge.score_with_usage("What is 2 + 2?", ["2 + 2 = 4.", "The answer is \\boxed{4}."])
    assert len(scored.scores) == 1 and 0.0 <= scored.scores[0] <= 1.0
    assert scored.usage is not None and scored.usage.completion_tokens > 0
