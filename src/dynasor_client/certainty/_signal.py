"""The one interface every confidence signal implements, and the paper's entropy certaindex.

A signal is a small object. ``signal.batch(obs)`` gives its value after every prefix of every row,
``[B, K]`` in [0, 1] (NaN where it is undefined, e.g. a reward signal before any reward); calling
``signal(obs)`` gives the current value of a single program as a :class:`Certainty` (value and the
number of observations it rests on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ._observations import Certainty, FloatArray, IntArray, Observations, agreeing_future, prefix_class_counts


class Signal(ABC):
    """Base class of confidence signals (see the module docs)."""

    #: short name used in JSON and reports
    name: str = "signal"

    @abstractmethod
    def batch(self, obs: Observations) -> FloatArray:
        """Value in [0, 1] after each prefix: ``out[b, k]`` uses the first k+1 observations of row b."""

    def support(self, obs: Observations) -> IntArray:
        """Observations each value rests on (default: all valid ones in the prefix)."""
        return obs.counts

    def __call__(self, obs: Observations) -> Certainty:
        if obs.shape[0] != 1:
            raise ValueError("call a signal on one program (B = 1); use .batch() for many")
        if obs.shape[1] == 0 or not obs.valid.any():
            return Certainty(float("nan"), 0)
        last = int(np.flatnonzero(obs.valid[0])[-1])
        return Certainty(float(self.batch(obs)[0, last]), int(self.support(obs)[0, last]))

    def best_case(self, obs: Observations, count: int) -> FloatArray:
        """``[B]``: the highest value row b could reach once it holds ``count`` observations, whatever
        the ones still to come (1, no bound, unless the signal knows better). A stop rule uses it
        to tell a check it cannot pass: a program skips that check instead of pausing at it."""
        return np.ones(obs.shape[0])

    def params(self) -> dict[str, Any]:
        """Parameters that, with ``name``, rebuild this signal (for JSON)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


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
