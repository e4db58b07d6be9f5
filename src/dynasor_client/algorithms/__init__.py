"""Reasoning programs as coroutines driven by certaindex.

A program gets everything from a :class:`ProgramContext` (generation, allowance, certaindex
reporting, whether to go on) and returns a :class:`ProgramResult`. :class:`StandaloneContext` runs
one program over one endpoint. So far: :func:`self_consistency`, :func:`best_of_n` (with weighted
majority) and reward-model clients (:class:`PoolingRewardModel` for vLLM's ``/pooling`` PRMs and the
replay engine, :class:`JudgeRewardModel` on any chat endpoint) and :func:`dynasor_cot` (long chain
of thought with concurrent probes), :func:`rebase` (reward-weighted tree expansion) and :func:`mcts`.
"""

from ._best_of_n import best_index, best_of_n, best_of_n_rule, weighted_majority
from ._dynasor_cot import dynasor_cot, in_thinking
from ._mcts import Node, backpropagate, mcts, select, uct
from ._program import (
    CertaindexPoint,
    ProgramContext,
    ProgramResult,
    StandaloneContext,
    StopReason,
    TokenKind,
    TokenUsage,
    rule_stop_reason,
)
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
    "rule_stop_reason",
    "select",
    "self_consistency",
    "self_consistency_rule",
    "tree_certaindex",
    "uct",
    "weighted_majority",
    "yes_probability",
]
