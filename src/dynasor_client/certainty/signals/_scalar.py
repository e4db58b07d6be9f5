"""Signals that aggregate one number per observation: reward, mean logprob, output length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from .._observations import BoolArray, FloatArray, IntArray, Observations
from ._base import Signal
from ._registry import register_signal
from ._util import Aggregate, check_aggregate, prefix_aggregate


class RewardCertainty(Signal):
    """Reward certaindex: an aggregate of reward-model scores over the observations so far.

    Each observation's raw score r (``Observations.rewards``; NaN = not scored, left out) is first
    normalised to [0, 1], then aggregated over the prefix with ``aggregate`` (``"mean"``, ``"max"``
    or ``"min"``; for max and min the order does not matter, for the mean it does: one wild score
    moves the mean of normalised scores by at most 1/n).

    - Sigmoid (default): ``1 / (1 + exp(-(r - offset) / scale))``: 0.5 at ``offset``.
    - Min-max: with ``bounds=(low, high)``, ``clip((r - low) / (high - low), 0, 1)``. Qwen2.5-Math's
      outcome reward model scores about -4 to +6 (``bounds=(-4, 6)``).

    With ``answered_only=True`` observations without an answer are left out too (by default a
    reward is a judgement of the whole output, answer or not). NaN before the first score; support =
    scored observations so far.
    """

    name = "reward"

    def __init__(
        self,
        aggregate: Aggregate = "mean",
        *,
        scale: float = 1.0,
        offset: float = 0.0,
        bounds: Sequence[float] | None = None,
        answered_only: bool = False,
    ) -> None:
        self.aggregate = check_aggregate(aggregate)
        if not scale > 0:
            raise ValueError("scale must be > 0")
        self.scale, self.offset = float(scale), float(offset)
        self.bounds: tuple[float, float] | None = None
        if bounds is not None:
            low, high = (float(x) for x in bounds)
            if not high > low:
                raise ValueError("bounds must be (low, high) with high > low")
            self.bounds = (low, high)
        self.answered_only = bool(answered_only)

    def normalise(self, rewards: FloatArray) -> FloatArray:
        """Raw scores to [0, 1] (NaN stays NaN)."""
        if self.bounds is not None:
            low, high = self.bounds
            return np.clip((rewards - low) / (high - low), 0.0, 1.0)
        out: FloatArray = expit((rewards - self.offset) / self.scale)
        return out

    def _present(self, obs: Observations) -> BoolArray:
        present = obs.valid & ~np.isnan(obs.rewards)
        return present & (obs.labels >= 0) if self.answered_only else present

    def batch(self, obs: Observations) -> FloatArray:
        return prefix_aggregate(self.normalise(obs.rewards), self._present(obs), self.aggregate)

    def support(self, obs: Observations) -> IntArray:
        return np.cumsum(self._present(obs), axis=1)

    def params(self) -> dict[str, Any]:
        return {
            "aggregate": self.aggregate,
            "scale": self.scale,
            "offset": self.offset,
            "bounds": list(self.bounds) if self.bounds is not None else None,
            "answered_only": self.answered_only,
        }


class MeanLogprobCertainty(Signal):
    """The mean-logprob baseline (DeepConf compares against it).

    Expects ``Observations.confidence`` to hold each observation's mean token logprob
    (:func:`mean_logprob`, <= 0). Each becomes exp(mean logprob), the geometric mean of its token
    probabilities, in (0, 1] (positive values are clipped to 0 first); these are aggregated over the
    observations so far with ``aggregate``. NaN confidences are left out; NaN before the first.
    """

    name = "mean_logprob"

    def __init__(self, aggregate: Aggregate = "mean") -> None:
        self.aggregate = check_aggregate(aggregate)

    def _present(self, obs: Observations) -> BoolArray:
        return obs.valid & ~np.isnan(obs.confidence)

    def batch(self, obs: Observations) -> FloatArray:
        probs = np.exp(np.minimum(obs.confidence, 0.0))
        return prefix_aggregate(probs, self._present(obs), self.aggregate)

    def support(self, obs: Observations) -> IntArray:
        return np.cumsum(self._present(obs), axis=1)

    def params(self) -> dict[str, Any]:
        return {"aggregate": self.aggregate}


class OutputLengthCertainty(Signal):
    """The output-length baseline: shorter outputs read as more confident.

    ``scale / (scale + mean tokens)`` over the observations so far: 1 for empty outputs, 0.5 when
    the mean is ``scale`` tokens, towards 0 for very long ones. It is strictly decreasing and never
    saturates, so thresholds on it still separate long outputs. Observations with ``tokens <= 0``
    are left out (``Observations`` uses 0 for "unknown"); NaN before the first known length.
    """

    name = "output_length"

    def __init__(self, scale: float = 1000.0) -> None:
        if not scale > 0:
            raise ValueError("scale must be > 0")
        self.scale = float(scale)

    def _present(self, obs: Observations) -> BoolArray:
        return obs.valid & (obs.tokens > 0)

    def batch(self, obs: Observations) -> FloatArray:
        mean = prefix_aggregate(obs.tokens.astype(np.float64), self._present(obs), "mean")
        out: FloatArray = self.scale / (self.scale + mean)
        return out

    def support(self, obs: Observations) -> IntArray:
        return np.cumsum(self._present(obs), axis=1)

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale}


register_signal(RewardCertainty.name, RewardCertainty)
register_signal(MeanLogprobCertainty.name, MeanLogprobCertainty)
register_signal(OutputLengthCertainty.name, OutputLengthCertainty)
