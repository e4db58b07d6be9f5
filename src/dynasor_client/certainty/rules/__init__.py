"""Stop rules: tiny composable policy objects, in the spirit of tenacity's stop strategies.

    rule = cap(30) | (entropy_at_least(0.7, at=[5]) & reward_at_least(0.4)) | hopeless(after=16, below=0.2)

- :class:`StopRule` (:mod:`._base`) — ``rule(obs)`` for one program, ``rule.batch(obs)`` for many;
  ``&`` and ``|`` (:class:`AllOf`, :class:`AnyOf`); JSON through ``to_dict`` / :func:`rule_from_dict`.
- The basic rules (:mod:`._basic`): :class:`Threshold`, :class:`Hopeless`, :class:`Cap`,
  :class:`TokenBudget`.
- The paper's allocation policies (:mod:`._allocation`): :class:`StaticThreshold`,
  :class:`MultiStepThreshold`, :class:`CurveFitAllocation`, :class:`DynamicCurveFit`, and
  :func:`remaining` (what a budget manager asks).
- The vocabulary rules are written in (:mod:`._vocabulary`): ``entropy_at_least``, ``cap``,
  ``token_budget``, ``hopeless``, ``esc``, ``adaptive_consistency``, ``reward_at_least``, ...
- Where a program consults its rule (:mod:`._checkpoints`): :func:`checkpoints`, :func:`checkpoint_mask`.
- Rule files (:mod:`._files`): :func:`load_rule`, :func:`rule_from_json`, and :func:`default_rule`,
  shipped as ``default_rule.json`` in this package.
"""

from ._allocation import (
    CurveFitAllocation,
    DynamicCurveFit,
    MultiStepThreshold,
    RemainingCurve,
    StaticThreshold,
    remaining,
)
from ._base import NO_LIMIT, AllOf, AnyOf, RuleReason, StopRule, first_stop, rule_from_dict
from ._basic import Cap, Hopeless, Threshold, TokenBudget
from ._checkpoints import checkpoint_mask, checkpoints
from ._files import DEFAULT_RULE_FILE as DEFAULT_RULE_FILE
from ._files import default_rule, load_rule, rule_from_json
from ._vocabulary import (
    adaptive_consistency,
    cap,
    confidence_at_least,
    entropy_at_least,
    esc,
    hopeless,
    probe_consistency_at_least,
    reward_at_least,
    token_budget,
)

__all__ = [
    "NO_LIMIT",
    "AllOf",
    "AnyOf",
    "Cap",
    "CurveFitAllocation",
    "DynamicCurveFit",
    "Hopeless",
    "MultiStepThreshold",
    "RemainingCurve",
    "RuleReason",
    "StaticThreshold",
    "StopRule",
    "Threshold",
    "TokenBudget",
    "adaptive_consistency",
    "cap",
    "checkpoint_mask",
    "checkpoints",
    "confidence_at_least",
    "default_rule",
    "entropy_at_least",
    "esc",
    "first_stop",
    "hopeless",
    "load_rule",
    "probe_consistency_at_least",
    "remaining",
    "reward_at_least",
    "rule_from_dict",
    "rule_from_json",
    "token_budget",
]
