"""Confidence signals: how settled a program is, as a value in [0, 1], from its :class:`Observations`.

- :class:`Signal` (:mod:`._base`) — the one interface: ``signal.batch(obs)`` for every prefix of many
  rows, ``signal(obs)`` for one program.
- :class:`EntropyCertainty` (:mod:`._entropy`) — the paper's certaindex H~ (normalised agreement entropy).
- The signals beyond entropy, each registered for JSON under its ``name``:

  ========================= ======================= =================================================
  class                     name                    from
  ========================= ======================= =================================================
  ``RewardCertainty``       ``reward``              reward-model scores (outcome or reduced process)
  ``MeanLogprobCertainty``  ``mean_logprob``        baseline: exp(mean logprob)
  ``OutputLengthCertainty`` ``output_length``       baseline: shorter outputs are more confident
  ``ConfidenceCertainty``   ``confidence``          DeepConf: confidence-weighted vote share
  ``BayesianAgreement``     ``bayesian_agreement``  Adaptive-Consistency: P(leader is the majority)
  ``WindowAgreement``       ``window_agreement``    ESC: the last w answers all equal
  ``ProbeConsistency``      ``probe_consistency``   Dynasor-CoT: agreement of the last w probes
  ========================= ======================= =================================================

  one number per observation (:mod:`._scalar`), the vote so far (:mod:`._vote`), a window of the
  newest observations (:mod:`._window`); array helpers they share in :mod:`._util`.
- The registry (:mod:`._registry`): :func:`register_signal` makes a signal loadable by name; every
  built-in signal registers itself when this package is imported.
- Per-observation features (:mod:`._features`): one raw output (text, token logprobs, step rewards)
  to the number that goes into one cell of :class:`Observations` (hesitation, DeepConf confidences).

The rules that read like the papers (``esc(5)``, ``adaptive_consistency(0.95)``, ...) are in
:mod:`dynasor_client.certainty.rules`.
"""

from ._base import Signal
from ._entropy import EntropyCertainty, normalised_entropy_certainty
from ._features import (
    DEFAULT_HESITATION_WORDS,
    bottom_group_confidence,
    group_confidence,
    is_hesitant,
    lowest_group_confidence,
    lowest_window_mean_logprob,
    mean_logprob,
    reduce_step_rewards,
    tail_confidence,
    token_confidence,
)
from ._registry import register_builtin_signals as register_builtin_signals
from ._registry import register_signal, registered_signals, signal_from_dict, signal_to_dict
from ._scalar import MeanLogprobCertainty, OutputLengthCertainty, RewardCertainty
from ._util import Aggregate as Aggregate
from ._vote import BayesianAgreement, ConfidenceCertainty, leader_posterior
from ._vote import Transform as Transform
from ._window import ProbeConsistency, WindowAgreement

__all__ = [
    "DEFAULT_HESITATION_WORDS",
    "BayesianAgreement",
    "ConfidenceCertainty",
    "EntropyCertainty",
    "MeanLogprobCertainty",
    "OutputLengthCertainty",
    "ProbeConsistency",
    "RewardCertainty",
    "Signal",
    "WindowAgreement",
    "bottom_group_confidence",
    "group_confidence",
    "is_hesitant",
    "leader_posterior",
    "lowest_group_confidence",
    "lowest_window_mean_logprob",
    "mean_logprob",
    "normalised_entropy_certainty",
    "reduce_step_rewards",
    "register_signal",
    "registered_signals",
    "signal_from_dict",
    "signal_to_dict",
    "tail_confidence",
    "token_confidence",
]
