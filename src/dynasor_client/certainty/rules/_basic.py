"""The basic rules: a signal reaching a threshold (:class:`Threshold`), a program that will not
settle (:class:`Hopeless`), the cap on observations (:class:`Cap`) and the token budget
(:class:`TokenBudget`). The cap and the budget are rules of the same kind as the others."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._observations import BoolArray, FloatArray, IntArray, Observations
from ..signals import EntropyCertainty, Signal, signal_from_dict, signal_to_dict
from ._base import _RULES, StopRule, next_step, steps_dict


def _checkpoints(counts: IntArray, at: Sequence[int] | None, every: int | None, min_obs: int) -> BoolArray:
    """Where a rule may fire: at the listed observation counts, or every ``every`` observations."""
    mask = counts >= min_obs
    if at is not None:
        mask &= np.isin(counts, np.asarray(at))
    if every is not None:
        mask &= counts % every == 0
    return mask


class Threshold(StopRule):
    """Stop when ``signal >= at_least``, checked only at observation counts ``at`` (a detect step)
    or every ``every`` observations, and never before ``min_obs`` observations."""

    kind = "threshold"

    def __init__(
        self,
        signal: Signal,
        at_least: float,
        *,
        at: Iterable[int] | None = None,
        every: int | None = None,
        min_obs: int = 1,
    ) -> None:
        if not 0.0 <= at_least <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {at_least}")
        if every is not None and every < 1:
            raise ValueError("every must be >= 1")
        self.signal, self.at_least = signal, float(at_least)
        self.at = tuple(sorted(at)) if at is not None else None
        self.every, self.min_obs = every, min_obs

    def batch(self, obs: Observations) -> BoolArray:
        values = self.signal.batch(obs)
        fires = np.nan_to_num(values, nan=-1.0) >= self.at_least
        return fires & _checkpoints(obs.counts, self.at, self.every, self.min_obs) & obs.valid

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        if not _checkpoints(np.array([count]), self.at, self.every, self.min_obs)[0]:
            return np.zeros(obs.shape[0], dtype=bool)
        return np.nan_to_num(self.signal.best_case(obs, count), nan=-1.0) >= self.at_least

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signal": signal_to_dict(self.signal),
            "at_least": self.at_least,
            "at": list(self.at) if self.at is not None else None,
            "every": self.every,
            "min_obs": self.min_obs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(
            signal_from_dict(data["signal"]),
            data["at_least"],
            at=data.get("at"),
            every=data.get("every"),
            min_obs=data.get("min_obs", 1),
        )


class Hopeless(StopRule):
    """Cut a program whose certaindex is still below a bound: it is unlikely to settle.

    ``Hopeless(after=16, below=0.2)`` checks from 16 observations on, after every one;
    ``Hopeless(below={10: 0.2, 20: 0.3})`` checks only at those counts (so it adds no rounds of its
    own in between). A signal that cannot be computed (NaN) never cuts. The one hopeless rule: the
    runtime's budget manager cuts programs by it too (:meth:`cuts`).
    """

    kind = "hopeless"
    reason = "hopeless"

    def __init__(
        self, after: int | None = None, below: float | Mapping[int, float] = 0.3, signal: Signal | None = None
    ) -> None:
        self.signal = signal or EntropyCertainty()
        self.after: int | None
        self.steps_below: dict[int, float] | None
        if isinstance(below, Mapping):
            if after is not None:
                raise ValueError("give after= with one bound, or a bound per step, not both")
            self.after, self.below, self.steps_below = None, None, steps_dict(below)
            if not self.steps_below:
                raise ValueError("a hopeless rule needs at least one step")
        else:
            if after is None or after < 1:
                raise ValueError(f"after must be >= 1, got {after}")
            self.after, self.below, self.steps_below = after, float(below), None

    def bounds(self, counts: IntArray) -> FloatArray:
        """The bound at each observation count (-inf where the rule is not checked)."""
        if self.steps_below is None:
            assert self.after is not None and self.below is not None
            return np.where(counts >= self.after, self.below, -np.inf)
        bound = np.full(counts.shape, -np.inf)
        for step, value in self.steps_below.items():
            bound[counts == step] = value
        return bound

    def cuts(self, count: int, value: float) -> bool:
        """Whether a program at ``count`` observations with certaindex ``value`` is hopeless."""
        return bool(not np.isnan(value) and value < self.bounds(np.array([count]))[0])

    def batch(self, obs: Observations) -> BoolArray:
        return self.fire_from(np.asarray(self.signal.batch(obs), dtype=np.float64), obs.counts, obs.valid)

    def fire_from(self, values: FloatArray, counts: IntArray, valid: BoolArray) -> BoolArray:
        """``batch`` from precomputed signal values."""
        return (np.nan_to_num(values, nan=np.inf) < self.bounds(counts)) & valid

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        return np.full(obs.shape[0], bool(self.bounds(np.array([count]))[0] > -np.inf))

    def check_mask(self, obs: Observations) -> BoolArray:
        """Where a program consults it."""
        return (self.bounds(obs.counts) > -np.inf) & obs.valid

    def checkpoints(self, cap: int) -> tuple[int, ...]:
        if self.steps_below is None:
            assert self.after is not None
            return tuple(range(self.after, cap + 1))
        return tuple(self.steps_below)

    def remaining(self, obs: Observations) -> IntArray:
        """How many more observations before it next decides (0 once it cut the row)."""
        counts = obs.counts
        n = counts[:, -1] if counts.shape[1] else np.zeros(counts.shape[0], dtype=np.int64)
        want = np.ones_like(n) if self.steps_below is None else next_step(n, tuple(self.steps_below))
        cut = self.batch(obs).any(axis=1) if counts.shape[1] else np.zeros(counts.shape[0], dtype=bool)
        return np.asarray(np.where(cut, 0, want), dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        bound: Any = self.below if self.steps_below is None else [[s, t] for s, t in self.steps_below.items()]
        data = {"kind": self.kind, "below": bound, "signal": signal_to_dict(self.signal)}
        return data if self.after is None else {**data, "after": self.after}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        below = data["below"]
        bound = float(below) if isinstance(below, int | float) else steps_dict(below)
        return cls(data.get("after"), bound, signal_from_dict(data["signal"]))


_RULES["hopeless_cut"] = Hopeless  # the per-step form's name in calibration files written before


class Cap(StopRule):
    """Stop after ``n`` observations (the knob's maximum)."""

    kind = "cap"
    reason = "cap"

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("cap must be >= 1")
        self.n = n

    def batch(self, obs: Observations) -> BoolArray:
        return (obs.counts >= self.n) & obs.valid

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        return np.full(obs.shape[0], count >= self.n)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(data["n"])


class TokenBudget(StopRule):
    """Stop once the observations so far cost ``tokens`` or more."""

    kind = "token_budget"
    reason = "budget"

    def __init__(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError("token budget must be >= 1")
        self.tokens = tokens

    def batch(self, obs: Observations) -> BoolArray:
        spent = np.cumsum(np.where(obs.valid, obs.tokens, 0), axis=1)
        return (spent >= self.tokens) & obs.valid

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(data["tokens"])
