"""The paper's certaindex for answer-producing programs: normalised agreement entropy H~."""

from __future__ import annotations

import numpy as np

from .._observations import FloatArray, Observations, agreeing_future, prefix_class_counts
from ._base import Signal


def normalised_entropy_certainty(counts: np.ndarray, none_counts: np.ndarray) -> FloatArray:
    """H~ = (log n - H) / log n from class counts ``[..., C]`` and missing-answer counts ``[...]``.

    Each missing answer is its own class (contributes (1/n) log n to H). n = 1 gives 1 (nothing
    disagrees yet); n = 0 gives NaN.
    """
    counts = counts.astype(np.float64)
    none = none_counts.astype(np.float64)
    n = counts.sum(axis=-1) + none
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / n[..., None]
        h_real = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
        h_none = np.where(none > 0, none / n * np.log(n), 0.0)
        log_n = np.log(n)
        value = (log_n - (h_real + h_none)) / log_n
    value = np.where(n == 1, 1.0, value)
    value = np.where(n == 0, np.nan, value)
    return np.clip(value, 0.0, 1.0)


class EntropyCertainty(Signal):
    """The paper's certaindex for answer-producing programs: normalised agreement entropy.

    H~ = (log n - H) / log n over the answer classes of the n observations so far: 1 when all agree,
    0 when all differ. At n = 5 a 4/1 split gives 0.689, 3/1/1 gives 0.41.
    """

    name = "entropy"

    def batch(self, obs: Observations) -> FloatArray:
        counts, none = prefix_class_counts(obs)
        return normalised_entropy_certainty(counts, none)

    def best_case(self, obs: Observations, count: int) -> FloatArray:
        """Entropy is lowest when every observation to come joins the largest class."""
        return self.batch(agreeing_future(obs, count))[:, -1]
