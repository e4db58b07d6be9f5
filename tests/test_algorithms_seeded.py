"""Every algorithm is deterministic under a seed: the same replay seed and program id give the same run.

(Self-consistency has its own test in test_self_consistency.py.) Also best-of-N end to end on the
real local model, which the other best-of-N tests exercise only through the replay engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dynasor_client import Endpoint, SamplingParams, as_program
from dynasor_client.algorithms import (
    JudgeRewardModel,
    PoolingRewardModel,
    best_of_n,
    dynasor_cot,
    mcts,
    rebase,
)
from dynasor_client.certainty import cap
from dynasor_client.program import ProgramResult, StandaloneContext
from tests.support.replay import replay_endpoint, traces_or_skip

Program = Callable[[Endpoint, StandaloneContext, str], Awaitable[ProgramResult]]

PROGRAMS: dict[str, tuple[Program, int]] = {
    "best_of_n": (lambda ep, ctx, q: best_of_n(q, context=ctx, reward_model=PoolingRewardModel(ep), n=6), 6),
    "rebase": (
        lambda ep, ctx, q: rebase(q, context=ctx, reward_model=PoolingRewardModel(ep), width=3, max_depth=3),
        3,
    ),
    "mcts": (
        lambda ep, ctx, q: mcts(
            q, context=ctx, reward_model=PoolingRewardModel(ep), iterations=3, max_depth=3
        ),
        6,
    ),
    "dynasor_cot": (lambda ep, ctx, q: dynasor_cot(q, context=ctx, chunk_tokens=64, max_tokens=256), 256),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
async def test_same_seed_same_run(name: str) -> None:
    questions = traces_or_skip("math-qwen25math-sc8.jsonl")[:6]
    program, limit = PROGRAMS[name]
    runs: list[dict[str, Any]] = []
    for _ in range(2):  # a fresh server each time, same seed, same program id
        async with replay_endpoint(questions, seed=11) as endpoint:
            context = StandaloneContext(endpoint, cap(limit), program_id=f"prog-{name}")
            result = await program(endpoint, context, questions[1].question)
            runs.append(
                {
                    "answer": result.answer,
                    "answers": result.answers,
                    "generated": result.tokens.generated,
                    "probe": result.tokens.probe,
                    "reason": result.stop_reason,
                }
            )
    assert runs[0] == runs[1]
    assert runs[0]["generated"] > 0


async def test_best_of_n_on_the_local_model(local_endpoint: Endpoint) -> None:
    result = await as_program(
        best_of_n,
        "Tom has 27 apples and buys 21 more. How many apples does he have?",
        reward_model=JudgeRewardModel(local_endpoint),
        n=4,
        params=SamplingParams(temperature=0.8, max_tokens=48, seed=5),
    ).run(local_endpoint)
    rewards = result.details["rewards"]
    assert len(rewards) == len(result.answers) == 4
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert result.tokens.reward > 0 and result.tokens.generated > 0
