"""The one interface every confidence signal implements.

A signal is a small object. ``signal.batch(obs)`` gives its value after every prefix of every row,
``[B, K]`` in [0, 1] (NaN where it is undefined, e.g. a reward signal before any reward); calling
``signal(obs)`` gives the current value of a single program as a :class:`Certainty` (value and the
number of observations it rests on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .._observations import Certainty, FloatArray, IntArray, Observations


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
