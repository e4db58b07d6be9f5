"""The confidence signals beyond entropy, and the rule vocabulary built on them.

Signals (each a :class:`Signal`, registered for JSON under its ``name``):

========================= ======================= ===============================================
class                     name                    from
========================= ======================= ===============================================
``RewardCertainty``       ``reward``              reward-model scores (outcome or reduced process)
``ProbeConsistency``      ``probe_consistency``   Dynasor-CoT: agreement of the last w probes
``ConfidenceCertainty``   ``confidence``          DeepConf: confidence-weighted vote share
``MeanLogprobCertainty``  ``mean_logprob``        baseline: exp(mean logprob)
``BayesianAgreement``     ``bayesian_agreement``  Adaptive-Consistency: P(leader is the majority)
``OutputLengthCertainty`` ``output_length``       baseline: shorter outputs are more confident
``WindowAgreement``       ``window_agreement``    ESC: the last w answers all equal
========================= ======================= ===============================================

Rules read like the papers: ``esc(5)``, ``adaptive_consistency(0.95)``,
``probe_consistency_at_least(1.0, window=3)``, ``reward_at_least(0.8, "max")``,
``confidence_at_least(0.95)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._rules import StopRule, Threshold
from ._signals_scalar import MeanLogprobCertainty, OutputLengthCertainty, RewardCertainty
from ._signals_util import Aggregate
from ._signals_vote import BayesianAgreement, ConfidenceCertainty, Transform, leader_posterior
from ._signals_window import ProbeConsistency, WindowAgreement

__all__ = [
    "BayesianAgreement",
    "ConfidenceCertainty",
    "MeanLogprobCertainty",
    "OutputLengthCertainty",
    "ProbeConsistency",
    "RewardCertainty",
    "WindowAgreement",
    "adaptive_consistency",
    "confidence_at_least",
    "esc",
    "leader_posterior",
    "probe_consistency_at_least",
    "reward_at_least",
]


def reward_at_least(
    threshold: float,
    aggregate: Aggregate = "mean",
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    bounds: Sequence[float] | None = None,
    answered_only: bool = False,
    at: Iterable[int] | None = None,
    every: int | None = None,
    min_obs: int = 1,
) -> StopRule:
    """Stop when the normalised ``aggregate`` (mean / max / min) reward reaches ``threshold``."""
    signal = RewardCertainty(
        aggregate, scale=scale, offset=offset, bounds=bounds, answered_only=answered_only
    )
    return Threshold(signal, threshold, at=at, every=every, min_obs=min_obs)


def probe_consistency_at_least(
    threshold: float,
    window: int = 3,
    *,
    at: Iterable[int] | None = None,
    every: int | None = None,
    min_obs: int = 1,
) -> StopRule:
    """Stop when the share of the last ``window`` probes agreeing confidently with the newest reaches
    ``threshold`` (1.0 is Dynasor-CoT: all ``window`` probes identical and none hesitant)."""
    return Threshold(ProbeConsistency(window), threshold, at=at, every=every, min_obs=min_obs)


def adaptive_consistency(
    p: float = 0.95,
    *,
    top_k: int | None = None,
    at: Iterable[int] | None = None,
    every: int | None = None,
    min_obs: int = 1,
) -> StopRule:
    """Adaptive-Consistency: stop when the posterior probability that the leader is the majority
    answer reaches ``p`` (the paper's default 0.95)."""
    return Threshold(BayesianAgreement(top_k), p, at=at, every=every, min_obs=min_obs)


def esc(window: int = 5) -> StopRule:
    """Early-stopping self-consistency: sample in windows of ``window`` and stop after the first
    window whose answers are all equal (and present)."""
    return Threshold(WindowAgreement(window), 1.0, every=window, min_obs=window)


def confidence_at_least(
    threshold: float,
    *,
    min_confidence: float | None = None,
    transform: Transform = "identity",
    at: Iterable[int] | None = None,
    every: int | None = None,
    min_obs: int = 1,
) -> StopRule:
    """DeepConf-online: stop when the confidence-weighted vote share of the leader reaches
    ``threshold`` (the paper: 0.95), counting only observations with confidence >= ``min_confidence``."""
    signal = ConfidenceCertainty(min_confidence, transform)
    return Threshold(signal, threshold, at=at, every=every, min_obs=min_obs)
