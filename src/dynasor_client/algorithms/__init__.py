"""Reasoning programs as coroutines driven by certaindex.

An algorithm takes what is its own (question, ``n``, rule, sampling) and gets everything else from
the :class:`~dynasor_client.program.ProgramContext` it runs under (generation, allowance,
certaindex reporting, whether to go on); it returns a :class:`ProgramResult`. Bind one to its query
with :func:`~dynasor_client.as_program` and run it alone (``.run(endpoint)``) or under a runtime.
So far: :func:`self_consistency`, :func:`best_of_n` (with weighted
majority) and reward-model clients (:class:`PoolingRewardModel` for vLLM's ``/pooling`` PRMs and the
replay engine, :class:`JudgeRewardModel` on any chat endpoint) and :func:`dynasor_cot` (long chain
of thought with concurrent probes), :func:`rebase` (reward-weighted tree expansion) and :func:`mcts`.
"""

from ..program import (
    CertaindexPoint,
    ProgramContext,
    ProgramResult,
    StandaloneContext,
    StopReason,
    TokenKind,
    TokenUsage,
)
from ._best_of_n import best_index, best_of_n, best_of_n_rule, weighted_majority
from ._dynasor_cot import dynasor_cot, in_thinking
from ._mcts import Node, backpropagate, mcts, select, uct
from ._rebase import allocate_width, rebase, tree_certaindex
from ._reward import (
    JudgeRewardModel,
    MeteredRewardModel,
    PoolingRewardModel,
    RewardScore,
    parse_pooling_scores,
    yes_probability,
)
from ._reward_protocol import RewardModel
from ._rounds import RoundPlan, round_sizes
from ._self_consistency import self_consistency, self_consistency_rule

__all__ = [
    "CertaindexPoint",
    "JudgeRewardModel",
    "MeteredRewardModel",
    "Node",
    "PoolingRewardModel",
    "ProgramContext",
    "ProgramResult",
    "RewardModel",
    "RewardScore",
    "RoundPlan",
    "StandaloneContext",
    "StopReason",
    "TokenKind",
    "TokenUsage",
    "allocate_width",
    "backpropagate",
    "best_index",
    "best_of_n",
    "best_of_n_rule",
    "dynasor_cot",
    "in_thinking",
    "mcts",
    "parse_pooling_scores",
    "rebase",
    "round_sizes",
    "select",
    "self_consistency",
    "self_consistency_rule",
    "tree_certaindex",
    "uct",
    "weighted_majority",
    "yes_probability",
]
