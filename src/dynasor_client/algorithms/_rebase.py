"""Rebase: reward-balanced tree search, one reasoning step per depth, driven by certaindex.

frontier = [the empty solution], width left = ``width``
each depth: expand every frontier node by its share of the width (one step each: generate until
``step_delimiter``); score every new node's partial solution with the reward model (a process
model's last step score); finished nodes become leaves and use up width; the rest share the width
left in proportion to softmax(reward / temperature) (:func:`allocate_width`)
answer = reward-weighted majority over the leaves; certaindex = mean of answer entropy and reward
certainty over the leaves so far (:func:`tree_certaindex`)

Steps end at ``step_delimiter``: servers strip stop strings from the text, so the delimiter is put
back after every step that stopped there (also as token ids when the trajectory continues by token
ids) before the node is expanded again. A step that stops without the delimiter cannot be told
apart from one that hit it by the finish reason alone ("stop" both ways), so a node is *finished*
when its step stopped and gave a final answer (for ``task="math"`` a ``\\boxed{}`` in that step, since
the math extractor falls back to the last number; otherwise any extractable answer) or came back
empty; a step cut at
``step_tokens`` ("length") continues in the next step.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._log import program_scope
from ..certainty import (
    EntropyCertainty,
    Observations,
    RewardCertainty,
    StopRule,
    cap,
    get_extractor,
)
from ..endpoints import SamplingParams, Trajectory
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind, algorithm
from ._best_of_n import _score, weighted_majority
from ._prompting import DEFAULT_PROMPTING, Prompting
from ._reward_protocol import RewardModel


def allocate_width(rewards: Sequence[float], total: int, temperature: float) -> list[int]:
    """Split ``total`` among nodes in proportion to softmax(reward / temperature), rounded by
    largest remainder (ties: the earlier node) so the shares sum to ``total``. NaN rewards get the
    lowest weight of the scored ones; all NaN: equal shares."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if not rewards or total <= 0:
        return [0] * len(rewards)
    r = np.asarray(rewards, dtype=np.float64)
    if np.isnan(r).all():
        r = np.zeros_like(r)
    r = np.where(np.isnan(r), np.nanmin(r), r) / temperature
    weights = np.exp(r - r.max())
    quotas = weights / weights.sum() * total
    shares = np.floor(quotas).astype(np.int64)
    order = sorted(range(len(r)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[: total - int(shares.sum())]:
        shares[i] += 1
    return [int(s) for s in shares]


def tree_certaindex(labels: Sequence[int], rewards: Sequence[float], signal: RewardCertainty) -> float:
    """Mean of the answer entropy certainty (H~) and the reward certainty over ``labels``/``rewards``
    (either left out where NaN; 0.0 when both are)."""
    obs = Observations.single(labels, rewards=rewards)
    values = [v for v in (EntropyCertainty()(obs).value, signal(obs).value) if not math.isnan(v)]
    return float(np.mean(values)) if values else 0.0


@dataclass(slots=True)
class Step:
    """A node's trajectory after one more step, its reward and whether it is a leaf."""

    trajectory: Trajectory
    reward: float = math.nan
    answer: str | None = None
    finished: bool = False
    rewards: list[float] = field(default_factory=list)


async def expand(
    node: Trajectory,
    k: int,
    *,
    question: str,
    reward_model: RewardModel,
    context: ProgramContext,
    step_delimiter: str,
    step_tokens: int,
    task: str,
) -> list[Step]:
    """``k`` children of ``node``, one step each, scored concurrently (tokens counted on ``context``)."""
    extract = get_extractor(task)

    async def child(index: int) -> Step:
        traj = node.fork()
        # Siblings share their prompt: under one seed all k would be the same step.
        traj.params = traj.params.for_sample(index)
        # Under a budget the step reserves its tokens first and is shrunk to what is left.
        estimate = traj.prompt_estimate()
        async with context.request_slot(max_tokens=step_tokens, prompt_tokens=estimate) as most:
            assert most is not None
            with program_scope(context.program_id):
                chunk = await traj.extend(most, stop=[step_delimiter])
        context.charge(TokenKind.GENERATED, chunk.usage, estimate=estimate)
        answer = extract(traj.answer)
        stopped = chunk.finish_reason not in (None, "length")
        final = "\\boxed" in chunk.text if task == "math" else answer is not None
        finished = stopped and (final or not chunk.text.strip())
        if finished and task == "math" and "\\boxed" not in traj.text:
            # An empty step at the delimiter ended the path without a boxed answer: the extractor's
            # last-number fallback would invent one from the working (e.g. "6 x 6 = 36").
            answer = None
        scores = await _score(reward_model, question, traj.text.strip(), step_delimiter, context)
        return Step(traj, scores[-1] if scores else math.nan, answer, finished, scores)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(child(i)) for i in range(k)]
    return [t.result() for t in tasks]


async def tree_root(
    question: str,
    context: ProgramContext,
    prompting: Prompting,
    params: SamplingParams | None,
    step_delimiter: str,
) -> tuple[Trajectory, list[int] | None]:
    """A tree search's root (the question, asked) and, where the server continues a trajectory by
    token ids, the step delimiter's ids (to put it back after a step that stopped at it)."""
    root = await Trajectory.start(
        context.endpoint, messages=prompting.chat(question), params=params or SamplingParams(temperature=0.7)
    )
    return root, await context.endpoint.tokenize(step_delimiter) if root.mode == "tokens" else None


async def close_step(step: Step, delimiter: str, delimiter_ids: list[int] | None) -> None:
    """Put the stripped delimiter back after a step that stopped at it, so the node can go on."""
    traj = step.trajectory
    if traj.finish_reason in (None, "length"):
        return
    traj.pieces.append(delimiter)
    if traj.mode == "tokens" and delimiter_ids is not None:
        traj.token_ids.extend(delimiter_ids)
    traj.finish_reason = None


def stop_check(context: ProgramContext, labels: Sequence[int], rewards: Sequence[float]) -> StopReason | None:
    """The context's stop reason over the leaves so far (budget and deadline only while none)."""
    if labels:
        return context.stop_reason(Observations.single(labels, rewards=rewards))
    tokens, seconds = context.tokens_left(), context.seconds_left()
    if tokens is not None and tokens <= 0:
        return StopReason.BUDGET
    if seconds is not None and seconds <= 0:
        return StopReason.DEADLINE
    return None


@algorithm
async def rebase(
    question: str,
    *,
    reward_model: RewardModel,
    context: ProgramContext,
    width: int = 8,
    max_depth: int = 8,
    step_delimiter: str = "\n\n",
    temperature: float = 0.2,
    step_tokens: int = 256,
    rule: StopRule | None = None,
    signal: RewardCertainty | None = None,
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
) -> ProgramResult:
    """Grow a reward-balanced tree of ``width`` leaves, at most ``max_depth`` steps deep (module docs).

    ``rule`` (checked after every depth on the leaves so far) may end the search early; it is always
    combined with ``cap(width)``. ``signal`` normalises rewards for the weights and the certaindex
    (default sigmoid ``RewardCertainty("mean")``; ``bounds=(0, 1)`` for probabilities). ``details``:
    ``allocations`` (per depth, the frontier's shares of the width), ``width_left`` (per depth, the
    width those shares sum to), ``frontier_rewards`` (per depth, what the shares were computed
    from), ``leaf_rewards``, ``labels``, ``depth``. Unfinished nodes at ``max_depth`` become leaves
    without an answer.
    """
    if width < 1 or max_depth < 1 or step_tokens < 1:
        raise ValueError("width, max_depth and step_tokens must be >= 1")
    stop_rule = cap(width) | rule if rule is not None else cap(width)
    signal = signal or RewardCertainty("mean")
    context.bind(stop_rule)
    root, delimiter_ids = await tree_root(question, context, prompting, params, step_delimiter)
    clusters = prompting.clusters()
    leaves: list[Step] = []
    frontier, shares = [root], [width]
    allocations: list[list[int]] = []
    width_left: list[int] = []
    frontier_rewards: list[list[float]] = []
    reason, depth = None, 0
    for depth in range(1, max_depth + 1):
        allocations.append(shares)
        width_left.append(sum(shares))
        async with asyncio.TaskGroup() as group:
            growing = [
                group.create_task(
                    expand(node, k, question=question, reward_model=reward_model, context=context,
                           step_delimiter=step_delimiter, step_tokens=step_tokens, task=prompting.task)
                )
                for node, k in zip(frontier, shares, strict=True) if k > 0
            ]  # fmt: skip
        children = [s for t in growing for s in t.result()]
        open_ = [s for s in children if not s.finished and depth < max_depth]
        for step in children:
            if step.finished or depth == max_depth:
                if not step.finished:
                    step.answer = None  # cut by the depth limit: no final answer
                leaves.append(step)
                await asyncio.to_thread(clusters.add, step.answer)
        rewards = [s.reward for s in leaves]
        if leaves:
            leader = weighted_majority(clusters.labels, rewards, signal)
            context.report(
                tree_certaindex(clusters.labels, rewards, signal),
                len(leaves),
                None if leader is None else clusters.representatives[leader],
            )
        reason = stop_check(context, clusters.labels, rewards)
        if reason is not None or not open_:
            break
        for step in open_:
            await close_step(step, step_delimiter, delimiter_ids)
        frontier_rewards.append([s.reward for s in open_])
        shares = allocate_width(frontier_rewards[-1], len(open_), temperature)
        frontier = [s.trajectory for s in open_]
    labels = clusters.labels
    rewards = [s.reward for s in leaves]
    label = weighted_majority(labels, rewards, signal)
    answer = None if label is None else clusters.representatives[label]
    if answer is None and (majority := clusters.majority()) is not None:
        answer = majority[1]
    return context.result(
        answer,
        reason,
        answers=tuple(s.answer for s in leaves),
        details={
            "allocations": allocations,
            "width_left": width_left,
            "frontier_rewards": frontier_rewards,
            "leaf_rewards": rewards,
            "labels": labels,
            "depth": depth,
        },
    )
