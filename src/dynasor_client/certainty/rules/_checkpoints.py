"""Checkpoints: the observation counts at which a program consults its rule (so pauses between
rounds). :func:`checkpoints` plans a program's rounds; :func:`checkpoint_mask` marks them in
``[B, K]`` observations (calibration counts rounds with it)."""

from __future__ import annotations

import numpy as np

from .._observations import BoolArray, Observations
from ._base import AllOf, AnyOf, StopRule
from ._basic import Cap, Threshold, TokenBudget


def _leaf_mask(rule: StopRule, obs: Observations) -> BoolArray:
    counts = obs.counts
    own = getattr(rule, "check_mask", None)
    if callable(own):
        return np.asarray(own(obs), dtype=bool) & obs.valid
    if isinstance(rule, Threshold):
        mask = counts >= rule.min_obs
        if rule.at is not None:
            mask &= np.isin(counts, np.asarray(rule.at))
        if rule.every is not None:
            mask &= counts % rule.every == 0
        return mask & obs.valid
    if isinstance(rule, Cap):
        return np.asarray((counts == rule.n) & obs.valid, dtype=bool)
    if isinstance(rule, TokenBudget):
        return obs.valid.copy()
    return obs.valid.copy()  # unknown rule: assume it is consulted after every observation


def checkpoint_mask(rule: StopRule, obs: Observations) -> BoolArray:
    """``[B, K]``: where a program running ``rule`` consults it (so pauses between rounds).

    Walks the rule tree: ``AnyOf`` takes the union of its parts' checkpoints, ``AllOf`` the
    intersection (it can only fire where all parts can); ``Threshold`` its ``at``/``every``/``min_obs``
    counts; ``Cap`` its count; a rule with a
    ``check_mask(obs)`` method (the allocation policies, whose checkpoints differ per row) its own;
    anything else every observation.
    """
    if isinstance(rule, AnyOf):
        return np.asarray(np.logical_or.reduce([checkpoint_mask(r, obs) for r in rule.rules]), dtype=bool)
    if isinstance(rule, AllOf):
        return np.asarray(np.logical_and.reduce([checkpoint_mask(r, obs) for r in rule.rules]), dtype=bool)
    return _leaf_mask(rule, obs)


def checkpoints(rule: StopRule, cap: int) -> tuple[int, ...]:
    """Observation counts (1..cap) at which ``rule`` may be consulted; ``cap`` always included.

    For rules whose checkpoints depend on the data (curve fits) this is every count they may use.
    """
    if isinstance(rule, AnyOf | AllOf):
        parts = [set(checkpoints(r, cap)) for r in rule.rules]
        merged = set.union(*parts) if isinstance(rule, AnyOf) else set.intersection(*parts)
        return tuple(sorted(merged | {cap}))
    own = getattr(rule, "checkpoints", None)
    if callable(own):
        return tuple(sorted({int(c) for c in own(cap) if 1 <= c <= cap} | {cap}))
    dummy = Observations(labels=np.zeros((1, cap), dtype=np.int64), valid=np.ones((1, cap), dtype=bool))
    mask = _leaf_mask(rule, dummy)[0]
    return tuple(sorted({int(i) + 1 for i in np.flatnonzero(mask)} | {cap}))
