"""Monte Carlo tree search over reasoning steps, driven by certaindex.

each iteration: select by UCT from the root down to a leaf; unless it is terminal, expand it by
``expansions`` next steps and score them with the reward model; back-propagate the value (the mean
normalised reward of the new children, or the terminal leaf's own) up the path
answer = the terminal node with the highest reward; certaindex = mean of answer entropy and the
mean normalised reward over the terminal nodes so far (:func:`~._rebase.tree_certaindex`)

Steps, terminal nodes and the delimiter are as in :mod:`._rebase`. A new child starts with one
visit and its own reward as value, so the root's visit count equals the iterations run.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np

from ..certainty import RewardCertainty, StopRule, cap
from ..endpoints import SamplingParams
from ..program import ProgramContext, ProgramResult, algorithm
from ._best_of_n import best_index
from ._prompting import DEFAULT_PROMPTING, Prompting
from ._rebase import Step, close_step, expand, stop_check, tree_certaindex, tree_root
from ._reward_protocol import RewardModel


@dataclass(eq=False, slots=True)
class Node:
    """A tree node: its step (None at the root), visits and value sum, parent and children."""

    step: Step | None = None
    parent: Node | None = None
    depth: int = 0
    visits: int = 0
    value_sum: float = 0.0
    children: list[Node] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.step is not None and self.step.finished


def uct(node: Node, c: float) -> float:
    """Mean value plus ``c * sqrt(ln N_parent / n)``; unvisited nodes first (infinity)."""
    if node.visits == 0:
        return math.inf
    parent = node.parent.visits if node.parent is not None else node.visits
    return node.value_sum / node.visits + c * math.sqrt(math.log(max(parent, 1)) / node.visits)


def select(root: Node, c: float) -> Node:
    """Walk from ``root`` to a leaf, taking the highest-UCT child (ties: the first)."""
    node = root
    while node.children:
        node = max(node.children, key=lambda child: uct(child, c))
    return node


def backpropagate(node: Node, value: float) -> None:
    """Add one visit and ``value`` to ``node`` and every ancestor."""
    walk: Node | None = node
    while walk is not None:
        walk.visits += 1
        walk.value_sum += value
        walk = walk.parent


@algorithm
async def mcts(
    question: str,
    *,
    reward_model: RewardModel,
    context: ProgramContext,
    iterations: int = 16,
    expansions: int = 2,
    c_uct: float = 1.4,
    max_depth: int = 6,
    step_delimiter: str = "\n\n",
    step_tokens: int = 256,
    rule: StopRule | None = None,
    signal: RewardCertainty | None = None,
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
) -> ProgramResult:
    """Run ``iterations`` of MCTS (module docs); the answer is the best-rewarded terminal node's.

    ``rule`` is checked after each iteration on the terminal nodes so far and may end the search
    early. ``signal`` normalises rewards into values in [0, 1] (default sigmoid; ``bounds=(0, 1)``
    for probabilities). Nodes at ``max_depth`` are terminal, without an answer. ``details``: ``root_visits``,
    ``terminal_rewards``, ``labels``, ``nodes``, ``iterations``.
    """
    if iterations < 1 or expansions < 1 or max_depth < 1 or step_tokens < 1:
        raise ValueError("iterations, expansions, max_depth and step_tokens must be >= 1")
    stop_rule = cap(iterations * expansions) | rule if rule is not None else cap(iterations * expansions)
    signal = signal or RewardCertainty("mean")
    context.bind(stop_rule)
    start, delimiter_ids = await tree_root(question, context, prompting, params, step_delimiter)
    root, clusters = Node(), prompting.clusters()
    terminals: list[Node] = []
    nodes, reason = 1, None

    def value(step: Step) -> float:
        v = float(signal.normalise(np.asarray([step.reward], dtype=np.float64))[0])
        return 0.0 if math.isnan(v) else v

    for _ in range(iterations):
        leaf = select(root, c_uct)
        if leaf.terminal or leaf.depth >= max_depth:
            assert leaf.step is not None
            backpropagate(leaf, value(leaf.step))
        else:
            trajectory = start if leaf.step is None else leaf.step.trajectory
            steps = await expand(trajectory, expansions, question=question, reward_model=reward_model,
                                 context=context, step_delimiter=step_delimiter, step_tokens=step_tokens,
                                 task=prompting.task)  # fmt: skip
            for step in steps:
                if not step.finished and leaf.depth + 1 >= max_depth:
                    step.finished, step.answer = True, None  # cut by the depth limit: no answer
                child = Node(step, leaf, leaf.depth + 1, 1, value(step))
                leaf.children.append(child)
                nodes += 1
                if child.terminal:
                    terminals.append(child)
                    await asyncio.to_thread(clusters.add, step.answer)
                else:
                    await close_step(step, step_delimiter, delimiter_ids)
            backpropagate(leaf, float(np.mean([value(s) for s in steps])))
        rewards = [n.step.reward for n in terminals if n.step is not None]
        if terminals:
            leader = best_index(clusters.labels, rewards)
            context.report(
                tree_certaindex(clusters.labels, rewards, signal),
                len(terminals),
                None if leader is None else clusters.representatives[clusters.labels[leader]],
            )
        reason = stop_check(context, clusters.labels, rewards)
        if reason is not None:
            break
    labels = clusters.labels
    rewards = [n.step.reward for n in terminals if n.step is not None]
    best = best_index(labels, rewards)
    answer = None if best is None else clusters.representatives[labels[best]]
    return context.result(
        answer,
        reason,
        answers=tuple(n.step.answer for n in terminals if n.step is not None),
        details={
            "root_visits": root.visits,
            "terminal_rewards": rewards,
            "labels": labels,
            "nodes": nodes,
            "iterations": root.visits,  # one back-propagation per iteration
            "best": best,
        },
    )
