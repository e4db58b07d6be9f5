"""Reasoning programs as coroutines driven by certaindex.

An algorithm takes what is its own (question, ``n``, rule, sampling) and gets everything else from
the :class:`~dynasor_client.program.ProgramContext` it runs under (generation, allowance,
certaindex reporting, whether to go on); it returns a :class:`ProgramResult`. Bind one to its query
with :func:`~dynasor_client.as_program` and run it alone (``.run(endpoint)``) or under a runtime.
So far: :func:`self_consistency`, :func:`best_of_n` (with weighted
majority) and reward-model clients (:class:`PoolingRewardModel` for vLLM's ``/pooling`` PRMs and the
replay engine, :class:`JudgeRewardModel` on any chat endpoint) and :func:`dynasor_cot` (long chain
of thought with concurrent probes), :func:`deer` (DEER-style trial answers at "Wait"-type points of
one streamed chain of thought), :func:`rebase` (reward-weighted tree expansion), :func:`mcts`
and :func:`deepconf_online` (DeepConf: weak traces stopped while they stream).
"""

from ._best_of_n import best_of_n, best_of_n_rule
from ._deepconf import deepconf_online
from ._deer import DEER_POINTS, TRIAL_SUFFIX, deer, trial_confidence
from ._dynasor_cot import dynasor_cot
from ._mcts import mcts
from ._prompting import DEFAULT_SYSTEM, Prompting
from ._rebase import rebase
from ._reward import JudgeRewardModel, MeteredRewardModel, PoolingRewardModel, RewardScore
from ._reward_protocol import RewardModel
from ._rounds import RoundPlan, round_sizes
from ._self_consistency import self_consistency, self_consistency_rule

__all__ = [
    "DEER_POINTS",
    "DEFAULT_SYSTEM",
    "TRIAL_SUFFIX",
    "JudgeRewardModel",
    "MeteredRewardModel",
    "PoolingRewardModel",
    "Prompting",
    "RewardModel",
    "RewardScore",
    "RoundPlan",
    "best_of_n",
    "best_of_n_rule",
    "deepconf_online",
    "deer",
    "dynasor_cot",
    "mcts",
    "rebase",
    "round_sizes",
    "self_consistency",
    "self_consistency_rule",
    "trial_confidence",
]
