"""Rebase and MCTS: the tree functions as pure functions, then end to end (mechanics only) on the
local model and the replay engine. No accuracy claims: the recorded data has one outcome reward per
sample and few shared step prefixes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest

from dynasor_client import Capabilities, Endpoint, LocalLlamaServer, SamplingParams, as_program
from dynasor_client.algorithms._mcts import Node, backpropagate, mcts, select, uct
from dynasor_client.algorithms._rebase import allocate_width, expand, rebase
from dynasor_client.algorithms._reward import JudgeRewardModel, PoolingRewardModel
from dynasor_client.certainty import cap
from dynasor_client.endpoints import Message, Trajectory
from dynasor_client.program import StandaloneContext
from dynasor_client.traces import TraceQuestion
from tests.support.llama import SentBodies
from tests.support.replay import replay_endpoint, traces_or_skip


def test_allocate_width() -> None:
    shares = allocate_width([0.9, 0.5, 0.1], 8, 0.2)
    assert sum(shares) == 8 and shares[0] > shares[1] >= shares[2]
    assert allocate_width([0.3, 0.3, 0.3], 4, 0.2) == [2, 1, 1]  # largest remainder, ties: earlier
    assert allocate_width([float("nan")] * 2, 3, 1.0) == [2, 1]
    assert sum(allocate_width([1.0, float("nan"), 0.0], 5, 0.5)) == 5
    assert allocate_width([], 3, 1.0) == [] and allocate_width([1.0], 0, 1.0) == [0]
    with pytest.raises(ValueError):
        allocate_width([1.0], 1, 0.0)


def test_uct_select_backpropagate() -> None:
    root = Node()
    a, b = Node(parent=root, depth=1), Node(parent=root, depth=1)
    root.children = [a, b]
    assert select(root, 1.4) is a  # both unvisited: the first
    backpropagate(a, 0.2)
    assert select(root, 1.4) is b  # unvisited first
    backpropagate(b, 0.9)
    assert root.visits == 2 and root.value_sum == pytest.approx(1.1)
    assert select(root, 0.0) is b  # pure exploitation
    c = Node(parent=b, depth=2)
    b.children = [c]
    backpropagate(c, 0.5)
    assert (c.visits, b.visits, root.visits) == (1, 2, 3)
    assert b.value_sum == pytest.approx(1.4) and root.value_sum == pytest.approx(1.6)
    assert uct(a, 1.0) == pytest.approx(0.2 + math.log(3) ** 0.5)


async def test_rebase_local(local_endpoint: Endpoint) -> None:
    result = await as_program(
        rebase,
        "What is 2 + 3?",
        reward_model=JudgeRewardModel(local_endpoint),
        width=4,
        max_depth=3,
        step_tokens=32,
    ).run(local_endpoint)  # fmt: skip
    d = result.details
    assert len(result.answers) <= 4
    for shares, left in zip(d["allocations"], d["width_left"], strict=True):
        assert sum(shares) == left
    for shares, rewards in zip(d["allocations"][1:], d["frontier_rewards"], strict=True):
        best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
        assert shares[best] >= shares[worst]
    assert result.tokens.generated > 0 and result.tokens.reward > 0
    assert result.answer is None or result.answer in result.answers


async def test_mcts_local(local_endpoint: Endpoint) -> None:
    result = await as_program(
        mcts,
        "What is 2 + 3?",
        reward_model=JudgeRewardModel(local_endpoint),
        iterations=4,
        expansions=2,
        max_depth=3,
        step_tokens=32,
    ).run(local_endpoint)  # fmt: skip
    assert result.details["root_visits"] == result.details["iterations"] == 4
    assert result.tokens.generated > 0 and result.tokens.reward > 0
    assert result.answer is None or result.answer in result.answers


async def test_seeded_siblings_are_sent_different_seeds(
    local_server: LocalLlamaServer, local_capabilities: Capabilities
) -> None:
    # A node's children share its prompt, and a server repeats a seeded request's sample: each
    # child is sent its own seed (seed + its index), or under a seed all k would be one step. What
    # the model writes under distinct seeds may still coincide, so the seeds sent are what is checked.
    question = "What is 12 x 7? Think step by step."
    params = SamplingParams(temperature=1.0, seed=3)
    sent = SentBodies()
    async with Endpoint(
        local_server.base_url, capabilities=local_capabilities, timeout=60, transport=sent
    ) as endpoint:
        chat: list[Message] = [{"role": "user", "content": question}]
        start = await Trajectory.start(endpoint, messages=chat, params=params)
        steps = await expand(
            start, 3, question=question, reward_model=JudgeRewardModel(endpoint),
            context=StandaloneContext(endpoint, cap(3)), step_delimiter="\n\n", step_tokens=24, task="math",
        )  # fmt: skip
    assert [step.trajectory.params.seed for step in steps] == [3, 4, 5]
    step_seeds = [body.get("seed") for body in sent.bodies if body.get("max_tokens") == 24]
    assert sorted(step_seeds) == [3, 4, 5], sent.bodies


@pytest.fixture(scope="module")
def questions() -> list[TraceQuestion]:
    return traces_or_skip("math-qwen25math-sc8.jsonl")


@pytest.fixture
async def replay(questions: list[TraceQuestion]) -> AsyncIterator[Endpoint]:
    async with replay_endpoint(questions) as endpoint:
        yield endpoint


async def test_rebase_and_mcts_on_replay(replay: Endpoint, questions: list[TraceQuestion]) -> None:
    q = questions[0]
    recorded = {s.answer for s in q.samples}
    model = PoolingRewardModel(replay)
    r = await as_program(rebase, q.question, reward_model=model, width=4, max_depth=4, step_tokens=64).run(
        replay
    )
    assert len(r.answers) <= 4 and (r.answer is None or r.answer in recorded)
    for shares, left in zip(r.details["allocations"], r.details["width_left"], strict=True):
        assert sum(shares) == left
    m = await as_program(mcts, q.question, reward_model=model, iterations=6, max_depth=4, step_tokens=64).run(
        replay
    )
    assert m.details["root_visits"] == m.details["iterations"]
    assert m.answer is None or m.answer in recorded
    assert r.tokens.generated > 0 and m.tokens.generated > 0
