"""The vocabulary users write rules in; they read like the papers::

    rule = cap(30) | (entropy_at_least(0.7, at=[5]) & reward_at_least(0.4)) | hopeless(after=16, below=0.2)

``entropy_at_least`` (the paper's H~ at a detect step), ``cap``, ``token_budget``, ``hopeless``, and
the published baselines on the signals beyond entropy: ``esc(5)``, ``adaptive_consistency(0.95)``,
``probe_consistency_at_least(1.0, window=3)``, ``reward_at_least(0.8, "max")``,
``confidence_at_least(0.95)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..signals import (
    Aggregate,
    BayesianAgreement,
    ConfidenceCertainty,
    EntropyCertainty,
    ProbeConsistency,
    RewardCertainty,
    Signal,
    Transform,
    WindowAgreement,
)
from ._base import StopRule
from ._basic import Cap, Hopeless, Threshold, TokenBudget


def entropy_at_least(
    threshold: float, *, at: Iterable[int] | None = None, every: int | None = None, min_obs: int = 2
) -> StopRule:
    """Stop when the entropy certaindex H~ reaches ``threshold`` (the paper: 0.7 at a detect step of 5)."""
    return Threshold(EntropyCertainty(), threshold, at=at, every=every, min_obs=min_obs)


def cap(n: int) -> StopRule:
    """Stop after ``n`` observations."""
    return Cap(n)


def token_budget(tokens: int) -> StopRule:
    """Stop once a program's observations cost ``tokens`` tokens."""
    return TokenBudget(tokens)


def hopeless(
    after: int | None = None, below: float | Mapping[int, float] = 0.3, signal: Signal | None = None
) -> StopRule:
    """Cut programs whose certaindex (default: entropy) is below ``below`` from ``after``
    observations on, or below ``below[k]`` at each listed count ``k`` (:class:`Hopeless`)."""
    return Hopeless(after, below, signal)


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
