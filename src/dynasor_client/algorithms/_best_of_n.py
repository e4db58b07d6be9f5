"""Best-of-N with a reward model, driven by certaindex.

sample a round; score every response with the reward model; while the stop rule does not fire: next round
answer = the highest-reward response's answer ("max") or the class with the largest total reward
("weighted_majority"); certaindex = the mean normalised reward (RewardCertainty)

Each response is split into steps at ``step_separator`` and scored; a process reward model's step
scores are reduced to one per response (``step_reduce``: the weakest step by default), recorded in
``Observations.rewards`` so reward rules (``reward_at_least``) see them. The default stop rule:
``cap(n) | (reward_at_least(0.9, at=[detect]) & entropy_at_least(0.7, at=[detect]))``: stop at the
detect round when the responses both score well and agree; otherwise draw all ``n``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..certainty import RewardCertainty, StopRule, cap, entropy_at_least, reward_at_least
from ..certainty.signals import reduce_step_rewards
from ..endpoints import SamplingParams
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind, algorithm
from ._prompting import DEFAULT_PROMPTING, Prompting
from ._reward import MeteredRewardModel, reward_estimate
from ._reward_protocol import RewardModel
from ._rounds import RoundSchedule, chat_draw
from ._samples import Samples, sample_text, sampling_plan

Aggregate = Literal["max", "weighted_majority"]


def best_of_n_rule(n: int, detect: int) -> StopRule:
    """The default stop rule (module docs)."""
    return cap(n) | (reward_at_least(0.9, at=[detect]) & entropy_at_least(0.7, at=[detect]))


async def _score(
    model: RewardModel, question: str, text: str, separator: str, context: ProgramContext
) -> list[float]:
    steps = text.split(separator)
    if isinstance(model, MeteredRewardModel):
        # Reserved whole under a budget (a reward request cannot be shrunk), else refused.
        tokens = reward_estimate(model, question, steps)
        async with context.request_slot(max_tokens=tokens, kind=TokenKind.REWARD, shrink=False):
            scored = await model.score_with_usage(question, steps)
        if scored.usage is not None:
            context.charge(TokenKind.REWARD, scored.usage, estimate=tokens)
        return scored.scores
    return await model.score(question, steps)


def best_index(labels: Sequence[int], rewards: Sequence[float]) -> int | None:
    """Index of the highest-reward answered response (ties: the first drawn); NaN rewards and
    missing answers (label < 0) never count. None when nothing is both answered and scored."""
    scored = [i for i, r in enumerate(rewards) if labels[i] >= 0 and not math.isnan(r)]
    return max(scored, key=lambda i: rewards[i]) if scored else None


def weighted_majority(labels: Sequence[int], rewards: Sequence[float], signal: RewardCertainty) -> int | None:
    """The class label with the largest sum of normalised rewards (``signal.normalise``; ties: the
    class seen first); NaN rewards and missing answers never count. None when nothing counts."""
    totals: dict[int, float] = {}
    weights = signal.normalise(np.asarray(rewards, dtype=np.float64))
    for label, weight in zip(labels, weights, strict=True):
        if label >= 0 and not math.isnan(weight):
            totals[label] = totals.get(label, 0.0) + float(weight)
    return max(totals, key=lambda label: (totals[label], -label)) if totals else None


@algorithm
async def best_of_n(
    question: str,
    *,
    reward_model: RewardModel,
    context: ProgramContext,
    n: int = 16,
    detect: int = 4,
    rounds: RoundSchedule = "auto",
    rule: StopRule | None = None,
    aggregate: Aggregate = "max",
    signal: RewardCertainty | None = None,
    step_separator: str | None = None,
    step_reduce: Literal["min", "last"] = "min",
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
    lookahead: int | None = None,
) -> ProgramResult:
    """Sample in rounds, score every response, stop when the rule fires (or ``n``); return the best.

    ``rule`` (default :func:`best_of_n_rule`) is always combined with ``cap(n)``. ``signal``
    normalises raw rewards for the certaindex and the weights of ``"weighted_majority"`` (default
    ``RewardCertainty("mean")``: a sigmoid, for raw outcome-model scores; for a PRM's probabilities
    use ``RewardCertainty(bounds=(0, 1))``). ``step_separator`` defaults to the reward model's own
    (``"\\n\\n"`` if it has none). ``details``: ``rewards`` (one per response, drawn order),
    ``step_rewards``, ``labels``, ``best`` (index of the response whose answer won under ``"max"``).
    ``lookahead`` and deadlines: as for :func:`~dynasor_client.algorithms.self_consistency`.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if aggregate not in ("max", "weighted_majority"):
        raise ValueError(f"aggregate must be 'max' or 'weighted_majority', got {aggregate!r}")
    stop_rule = cap(n) | rule if rule is not None else best_of_n_rule(n, detect)
    signal = signal or RewardCertainty("mean")
    separator = step_separator or getattr(reward_model, "step_separator", None) or "\n\n"
    context.bind(stop_rule)
    samples = Samples(prompting)
    plan = sampling_plan(stop_rule, context, samples, rounds=rounds, n=n, detect=detect, lookahead=lookahead)
    step_rewards: list[list[float]] = []
    rewards: list[float] = []
    reason = None
    draw = chat_draw(context, prompting.chat(question), params or SamplingParams(temperature=0.7))
    async with plan.rounds(draw) as results:
        async for choices in results:
            async with asyncio.TaskGroup() as group:
                scoring = [
                    group.create_task(_score(reward_model, question, sample_text(c), separator, context))
                    for c in choices
                ]
            for choice, scored in zip(choices, scoring, strict=True):
                await samples.add(choice)
                step_rewards.append(scored.result())
            rewards = [reduce_step_rewards(s, step_reduce) for s in step_rewards]
            obs = samples.observe(rewards=rewards)
            certainty = signal(obs).value
            leader = best_index(samples.clusters.labels, rewards)
            context.report(
                0.0 if math.isnan(certainty) else certainty,
                len(samples.answers),
                None if leader is None else samples.answers[leader],
            )
            reason = context.stop_reason(obs)
            if reason is not None:
                break
    if plan.out_of_time:
        reason = StopReason.DEADLINE
    answers, labels = samples.answers, samples.clusters.labels
    best = best_index(labels, rewards)
    if aggregate == "max":
        answer = None if best is None else answers[best]
    else:
        label = weighted_majority(labels, rewards, signal)
        answer = None if label is None else samples.clusters.representatives[label]
    if answer is None:
        answer = samples.majority()  # nothing scored: the plain majority
    return context.result(
        answer,
        reason,
        answers=answers,
        details={
            "rewards": rewards,
            "step_rewards": step_rewards,
            "labels": labels,
            "aggregate": aggregate,
            "best": best,
        },
        partial=plan.out_of_time,
    )
