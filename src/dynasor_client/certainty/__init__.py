"""Certaindex: how settled a reasoning program is, computed from what the model already produced.

- :class:`Observations` (:mod:`._observations`) — a program's observations (answers as class labels,
  rewards, tokens, confidences) as ``[B, K]`` arrays; B = 1 for a live program, many rows for
  calibration. Shared by signals and rules.
- :mod:`.signals` — :class:`Signal`, one interface for every confidence signal (value in [0, 1] +
  support), the entropy certaindex and the signals beyond it, registered by name for JSON; the
  per-observation features they read.
- :mod:`.rules` — :class:`StopRule`, composable stop rules (``&``, ``|``) serialisable to JSON; the
  allocation policies (static, multi-step, curve fit, dynamic curve fit); rule files
  (:func:`load_rule`) and :func:`default_rule`, calibrated on the SVAMP train split.
- :mod:`.answers` — answer extraction, normalisation, equivalence classes and voting.

Everything a user writes is importable from here. The profiler that fits rules to traces is
:mod:`dynasor_client.calibration` (an offline tool above this package).
"""

from ._observations import NONE, Certainty, Observations
from ._observations import BoolArray as BoolArray
from ._observations import FloatArray as FloatArray
from ._observations import IntArray as IntArray
from .answers import (
    AnswerClusters,
    Equivalence,
    ExactEquivalence,
    Extractor,
    MathEquivalence,
    cluster_answers,
    get_extractor,
    majority_vote,
    normalize_answer,
)
from .rules import (
    AllOf,
    AnyOf,
    Cap,
    CurveFitAllocation,
    DynamicCurveFit,
    Hopeless,
    MultiStepThreshold,
    RemainingCurve,
    RuleReason,
    StaticThreshold,
    StopRule,
    Threshold,
    TokenBudget,
    adaptive_consistency,
    cap,
    confidence_at_least,
    default_rule,
    entropy_at_least,
    esc,
    hopeless,
    load_rule,
    probe_consistency_at_least,
    reward_at_least,
    rule_from_dict,
    token_budget,
)
from .signals import (
    BayesianAgreement,
    ConfidenceCertainty,
    EntropyCertainty,
    MeanLogprobCertainty,
    OutputLengthCertainty,
    ProbeConsistency,
    RewardCertainty,
    Signal,
    WindowAgreement,
    register_signal,
    registered_signals,
)

__all__ = [
    "NONE",
    "AllOf",
    "AnswerClusters",
    "AnyOf",
    "BayesianAgreement",
    "Cap",
    "Certainty",
    "ConfidenceCertainty",
    "CurveFitAllocation",
    "DynamicCurveFit",
    "EntropyCertainty",
    "Equivalence",
    "ExactEquivalence",
    "Extractor",
    "Hopeless",
    "MathEquivalence",
    "MeanLogprobCertainty",
    "MultiStepThreshold",
    "Observations",
    "OutputLengthCertainty",
    "ProbeConsistency",
    "RemainingCurve",
    "RewardCertainty",
    "RuleReason",
    "Signal",
    "StaticThreshold",
    "StopRule",
    "Threshold",
    "TokenBudget",
    "WindowAgreement",
    "adaptive_consistency",
    "cap",
    "cluster_answers",
    "confidence_at_least",
    "default_rule",
    "entropy_at_least",
    "esc",
    "get_extractor",
    "hopeless",
    "load_rule",
    "majority_vote",
    "normalize_answer",
    "probe_consistency_at_least",
    "register_signal",
    "registered_signals",
    "reward_at_least",
    "rule_from_dict",
    "token_budget",
]
