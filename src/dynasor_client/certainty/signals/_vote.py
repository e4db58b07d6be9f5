"""Signals over the vote so far: DeepConf's confidence-weighted vote share and Adaptive-Consistency's
Bayesian agreement."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.special import gammainc

from .._observations import BoolArray, Certainty, FloatArray, IntArray, Observations, agreeing_future
from ._base import Signal
from ._registry import register_signal
from ._util import dense_labels

Transform = Literal["identity", "exp"]


class ConfidenceCertainty(Signal):
    """DeepConf's consensus: the confidence-weighted vote share of the leading answer.

    Each observation votes for its answer with weight w = its confidence (``transform="identity"``,
    for DeepConf group confidences, which are >= 0; negative ones count as 0) or exp(confidence)
    (``transform="exp"``, for mean logprobs: the geometric-mean token probability; positive values
    count as 0, i.e. weight 1). Observations with NaN confidence, or below ``min_confidence``
    (DeepConf's filter, a threshold calibrated on warm-up traces), are left out of the vote.
    Observations without an answer add their weight to the total but never lead (the
    missing-answer rule).

    Value = max over answers a of W(a) / W(all). The weights are non-negative and the leader's
    weight is part of the total, so it lies in [0, 1]; it is 1 when every counted observation
    agrees. NaN while the total weight is 0. DeepConf-online stops when this reaches tau = 0.95.
    Support: the observations in the vote.
    """

    name = "confidence"

    def __init__(self, min_confidence: float | None = None, transform: Transform = "identity") -> None:
        if transform not in ("identity", "exp"):
            raise ValueError(f"transform must be 'identity' or 'exp', got {transform!r}")
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        self.transform: Transform = transform

    def _counted(self, obs: Observations) -> BoolArray:
        counted = obs.valid & ~np.isnan(obs.confidence)
        if self.min_confidence is not None:
            counted &= obs.confidence >= self.min_confidence
        return counted

    def batch(self, obs: Observations) -> FloatArray:
        counted = self._counted(obs)
        conf = np.where(counted, obs.confidence, 0.0)
        weights = np.exp(np.minimum(conf, 0.0)) if self.transform == "exp" else np.maximum(conf, 0.0)
        weights = np.where(counted, weights, 0.0)
        ids, n_classes = dense_labels(obs.labels, counted & (obs.labels >= 0))
        b, k = obs.shape
        totals = np.zeros((b, max(n_classes, 1)))
        leader = np.zeros((b, k))
        rows = np.arange(b)
        for j in range(k):
            voted = ids[:, j] >= 0
            totals[rows[voted], ids[voted, j]] += weights[voted, j]
            leader[:, j] = totals.max(axis=1)
        total = np.cumsum(weights, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.clip(leader / total, 0.0, 1.0)
        return np.where(total > 0, share, np.nan)

    def support(self, obs: Observations) -> IntArray:
        return np.cumsum(self._counted(obs), axis=1)

    def params(self) -> dict[str, Any]:
        return {"min_confidence": self.min_confidence, "transform": self.transform}


_NODES = 64  # Gauss-Laguerre nodes: error below 1e-9 against 256 nodes on random vote splits


_HASH = np.random.default_rng(20230503).integers(1, 2**62, size=4096)


def _leader_table(leader: int, max_count: int) -> tuple[FloatArray, FloatArray]:
    """:func:`_quadrature` for counts up to at least ``max_count`` (cached in powers of two)."""
    return _quadrature(leader, max(32, 1 << max(max_count, 1).bit_length()))


@lru_cache(maxsize=4096)
def _quadrature(leader: int, max_count: int) -> tuple[FloatArray, FloatArray]:
    """Quadrature for E[h(X)], X ~ Gamma(leader + 1): nodes turned into log F_c(x) for every count
    c = 0..max_count (F_c the Gamma(c + 1) CDF) and normalised weights.

    Nodes and weights come from the Golub-Welsch eigenproblem of generalised Laguerre polynomials
    (weight x^leader e^-x), normalised in floating point so large leaders do not overflow.
    """
    i = np.arange(_NODES, dtype=np.float64)
    x, vectors = eigh_tridiagonal(2 * i + leader + 1, np.sqrt(i[1:] * (i[1:] + leader)))
    weights = vectors[0] ** 2
    counts = np.arange(max_count + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_cdf = np.log(gammainc(counts[None, :] + 1, np.maximum(x, 0.0)[:, None]))
    return np.maximum(log_cdf, -1e4), weights / weights.sum()


def leader_posterior(leader: IntArray, rivals: FloatArray) -> FloatArray:
    """P(the leader's share is the largest) under a flat Dirichlet posterior.

    ``leader`` is ``[N]`` (the leader's count, >= 1), ``rivals`` ``[N, C+1]``: ``rivals[n, c]`` is
    how many rival classes have count c. With Gamma variables G_j ~ Gamma(count_j + 1) the shares
    are G / sum(G), so the probability is E[prod_j F_j(G_leader)], a one-dimensional integral done
    by Gauss-Laguerre quadrature; for one rival it equals P(p > 1/2) under Beta(a + 1, b + 1).
    """
    out = np.zeros(leader.shape)
    for value in np.unique(leader):
        sel = leader == value
        log_cdf, weights = _leader_table(int(value), rivals.shape[1] - 1)
        out[sel] = np.exp(rivals[sel] @ log_cdf[:, : rivals.shape[1]].T) @ weights
    return np.clip(out, 0.0, 1.0)


class BayesianAgreement(Signal):
    """Adaptive-Consistency's stopping probability (Aggarwal et al. 2023): the posterior probability
    that the current leader is the true majority answer.

    Answers are draws from an unknown distribution p over the answer classes seen so far, with a
    flat prior, so p ~ Dirichlet(count + 1). Value = P(p_leader is the largest). For two classes it
    is P(p_leader > 1/2) under Beta(c1 + 1, c2 + 1), the paper's Beta criterion; for more, the
    paper's Dirichlet criterion, computed here exactly (to ~1e-9, deterministic) as a
    one-dimensional integral rather than by sampling. When only the leader's class has been seen
    a rival with count 0 stands in (so n unanimous answers give 1 - 2^-(n+1), as in the paper).

    Missing answers (the missing-answer rule): they never lead, and each is a rival class of its
    own with count 1 (as for entropy), so answerless observations lower the value. No answer at all
    gives 0. ``top_k``: only the leader and the ``top_k - 1`` largest rivals enter (the paper's
    Dirichlet variant uses 5; ``top_k=2`` is its Beta variant on the top two); ``None``: all.
    """

    name = "bayesian_agreement"

    def __init__(self, top_k: int | None = None) -> None:
        if top_k is not None and (int(top_k) != top_k or top_k < 2):
            raise ValueError("top_k must be an integer >= 2 or None")
        self.top_k = None if top_k is None else int(top_k)

    def batch(self, obs: Observations) -> FloatArray:
        b, k = obs.shape
        real = obs.valid & (obs.labels >= 0)
        missing = np.cumsum(obs.valid & (obs.labels < 0), axis=1, dtype=np.int64)
        ids, n_classes = dense_labels(obs.labels, real)
        counts = np.zeros((b, max(n_classes, 1)), dtype=np.int64)
        rows = np.arange(b)
        out = np.zeros((b, k))
        for j in range(k):
            voted = ids[:, j] >= 0
            counts[rows[voted], ids[voted, j]] += 1
            out[:, j] = self._posterior(counts, missing[:, j], j + 2)
        return np.where(obs.counts > 0, out, np.nan)

    def __call__(self, obs: Observations) -> Certainty:
        """The current value only (the same as the last of ``batch``, without the earlier prefixes)."""
        if obs.shape[0] != 1:
            raise ValueError("call a signal on one program (B = 1); use .batch() for many")
        n = int(obs.valid.sum())
        if n == 0:
            return Certainty(float("nan"), 0)
        labels = obs.labels[obs.valid]
        counts = np.unique(labels[labels >= 0], return_counts=True)[1].reshape(1, -1)
        missing = np.array([np.count_nonzero(labels < 0)])
        value = self._posterior(counts if counts.size else np.zeros((1, 1), dtype=np.int64), missing, n + 1)
        return Certainty(float(value[0]), n)

    def best_case(self, obs: Observations, count: int) -> FloatArray:
        """The leader is surest when every observation to come joins it."""
        return self.batch(agreeing_future(obs, count))[:, -1]

    def _posterior(self, counts: IntArray, missing: IntArray, width: int) -> FloatArray:
        """Posterior per row from its class counts ``[B, C]`` (all < ``width``) and missing answers."""
        b = counts.shape[0]
        rows = np.arange(b)
        leader = counts.max(axis=1)
        # rivals[r, c]: how many rival classes of row r have count c
        rivals = np.bincount((rows[:, None] * width + counts).ravel(), minlength=b * width).reshape(b, width)
        rivals[:, 0] = 0
        rivals[:, 1] += missing
        has = leader > 0
        rivals[rows[has], leader[has]] -= 1
        rivals[:, 0] = rivals.sum(axis=1) == 0  # the stand-in rival with count 0
        if self.top_k is not None:
            rivals = _keep_largest(rivals, self.top_k - 1)
        out = np.zeros(b)
        if has.any():
            # once per distinct vote split: replayed orders of one question share most
            leader, rivals = leader[has], rivals[has]
            first, inverse = _distinct(np.concatenate([leader[:, None], rivals], axis=1))
            out[has] = leader_posterior(leader[first], rivals[first].astype(np.float64))[inverse]
        return out

    def params(self) -> dict[str, Any]:
        return {"top_k": self.top_k}


def _distinct(table: IntArray) -> tuple[IntArray, IntArray]:
    """Indices of the distinct rows of ``table`` and, per row, which of them it equals.

    Rows are grouped by a 64-bit hash, then checked against their group's first row; on a (most
    unlikely) collision every row stands for itself, so results stay exact.
    """
    n, width = table.shape
    if width <= _HASH.size:
        keys = (table * _HASH[:width]).sum(axis=1)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        if np.array_equal(table[first][inverse], table):
            return first, inverse
    everyone = np.arange(n)
    return everyone, everyone


def _keep_largest(rivals: IntArray, n: int) -> IntArray:
    """Per row, keep only the ``n`` rivals with the largest counts (a histogram over counts)."""
    from_top = rivals[:, ::-1]
    before = np.cumsum(from_top, axis=1) - from_top
    kept = np.clip(n - before, 0, from_top)
    return np.ascontiguousarray(kept[:, ::-1])


register_signal(ConfidenceCertainty.name, ConfidenceCertainty)
register_signal(BayesianAgreement.name, BayesianAgreement)
