"""Certaindex: how settled a reasoning program is, computed from what the model already produced.

- :class:`Observations` — a program's observations (answers as class labels, rewards, tokens,
  confidences) as ``[B, K]`` arrays; B = 1 for a live program, many rows for calibration.
- :class:`Signal` — one interface for every confidence signal (value in [0, 1] + support).
- :class:`StopRule` — composable stop rules (``&``, ``|``), serialisable to JSON.
"""

from ._observations import NONE, Certainty, Observations, prefix_class_counts
from ._rules import (
    AllOf,
    AnyOf,
    Cap,
    Hopeless,
    StopRule,
    Threshold,
    TokenBudget,
    cap,
    entropy_at_least,
    first_stop,
    hopeless,
    register_signal,
    rule_from_dict,
    signal_from_dict,
    signal_to_dict,
    token_budget,
)
from ._signal import EntropyCertainty, Signal, normalised_entropy_certainty

__all__ = [
    "NONE",
    "AllOf",
    "AnyOf",
    "Cap",
    "Certainty",
    "EntropyCertainty",
    "Hopeless",
    "Observations",
    "Signal",
    "StopRule",
    "Threshold",
    "TokenBudget",
    "cap",
    "entropy_at_least",
    "first_stop",
    "hopeless",
    "normalised_entropy_certainty",
    "prefix_class_counts",
    "register_signal",
    "rule_from_dict",
    "signal_from_dict",
    "signal_to_dict",
    "token_budget",
]
