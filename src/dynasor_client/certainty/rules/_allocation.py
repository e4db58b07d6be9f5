"""The paper's allocation policies as stop rules (each serialisable to JSON like every rule).

- :class:`StaticThreshold` — at a detect step, stop if certaindex >= threshold, else run to the cap.
- :class:`MultiStepThreshold` — a threshold per step: stop at the first step whose threshold is met.
- the opposite cut, a program whose certaindex is still *below* a bound at a step, is the one
  :class:`~dynasor_client.certainty.Hopeless` rule (``Hopeless(below={step: bound})``).
- :class:`CurveFitAllocation` — at the detect step, allocate ``scale * f(certaindex)`` more
  observations, ``f`` a :class:`RemainingCurve` fitted on traces (remaining observations needed until
  the majority answer settles, against certaindex at that step); stop when they are in.
- :class:`DynamicCurveFit` — the same, re-evaluated at every checkpoint with the latest certaindex.

Besides ``batch`` (stop or not, per prefix), each policy has ``remaining(obs)`` — how many more
observations each row wants before the policy next decides (0 once it stopped) — for a budget
manager that reallocates work, and ``check_mask(obs)`` — where a program consults it (its rounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._observations import BoolArray, FloatArray, IntArray, Observations
from ..signals import EntropyCertainty, Signal, signal_from_dict, signal_to_dict
from ._base import AllOf, AnyOf, StopRule, next_step, steps_dict
from ._basic import Cap, Threshold


def _values(signal: Signal, obs: Observations) -> FloatArray:
    return np.asarray(signal.batch(obs), dtype=np.float64)


def _last(obs: Observations) -> tuple[IntArray, IntArray]:
    """Per row: index of the last valid observation (-1 if none) and the count of valid ones."""
    counts = obs.counts
    n = counts[:, -1] if counts.shape[1] else np.zeros(counts.shape[0], dtype=np.int64)
    last = np.where(n > 0, counts.shape[1] - 1 - np.argmax(obs.valid[:, ::-1], axis=1), -1)
    return np.asarray(last, dtype=np.int64), np.asarray(n, dtype=np.int64)


def _stopped(fire: BoolArray) -> BoolArray:
    return np.asarray(fire.any(axis=1), dtype=bool) if fire.shape[1] else np.zeros(fire.shape[0], bool)


def _may_reach(
    signal: Signal, obs: Observations, count: int, thresholds: Mapping[int, float], cap: int
) -> BoolArray:
    """``may_fire`` of a rule that stops at ``cap`` or where the signal meets ``thresholds[count]``."""
    if count >= cap:
        return np.ones(obs.shape[0], dtype=bool)
    if count not in thresholds:
        return np.zeros(obs.shape[0], dtype=bool)
    return np.asarray(np.nan_to_num(signal.best_case(obs, count), nan=-1.0) >= thresholds[count], dtype=bool)


class StaticThreshold(StopRule):
    """At ``detect`` observations stop if the signal (default: entropy H~) >= ``threshold``;
    otherwise run to ``cap``. The paper's SC setting: ``StaticThreshold(5, 0.7, cap)``."""

    kind = "static_threshold"

    def __init__(self, detect: int, threshold: float, cap: int, signal: Signal | None = None) -> None:
        if not 1 <= detect <= cap:
            raise ValueError(f"need 1 <= detect <= cap, got detect={detect}, cap={cap}")
        self.detect, self.threshold, self.cap = int(detect), float(threshold), int(cap)
        self.signal = signal or EntropyCertainty()

    def batch(self, obs: Observations) -> BoolArray:
        return self.fire_from(_values(self.signal, obs), obs.counts, obs.valid)

    def fire_from(self, values: FloatArray, counts: IntArray, valid: BoolArray) -> BoolArray:
        """``batch`` from precomputed signal values (``[B, K]``, as ``signal.batch`` gives them)."""
        v = np.nan_to_num(values, nan=-1.0)
        fire = ((counts == self.detect) & (v >= self.threshold)) | (counts >= self.cap)
        return np.asarray(fire & valid, dtype=bool)

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        return _may_reach(self.signal, obs, count, {self.detect: self.threshold}, self.cap)

    def check_mask(self, obs: Observations) -> BoolArray:
        counts = obs.counts
        return np.asarray(((counts == self.detect) | (counts == self.cap)) & obs.valid, dtype=bool)

    def checkpoints(self, cap: int) -> tuple[int, ...]:
        return (self.detect, self.cap)

    def remaining(self, obs: Observations) -> IntArray:
        _, n = _last(obs)
        want = np.where(n < self.detect, self.detect - n, np.maximum(self.cap - n, 0))
        return np.asarray(np.where(_stopped(self.batch(obs)), 0, want), dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detect": self.detect,
            "threshold": self.threshold,
            "cap": self.cap,
            "signal": signal_to_dict(self.signal),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(data["detect"], data["threshold"], data["cap"], signal_from_dict(data["signal"]))


class MultiStepThreshold(StopRule):
    """Stop at the first step (observation count) whose threshold the signal meets, else at ``cap``.

    ``MultiStepThreshold({3: 1.0, 5: 0.69, 10: 0.6}, cap=30)``: stop at 3 if all agree, at 5 if
    H~ >= 0.69, at 10 if H~ >= 0.6, else at 30. A NaN signal value never meets a threshold.
    """

    kind = "multi_step"

    def __init__(self, thresholds: Mapping[int, float], cap: int, signal: Signal | None = None) -> None:
        self.thresholds = steps_dict(thresholds)
        if any(s > cap for s in self.thresholds):
            raise ValueError("steps must not exceed the cap")
        self.cap = int(cap)
        self.signal = signal or EntropyCertainty()

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(self.thresholds)

    def batch(self, obs: Observations) -> BoolArray:
        return self.fire_from(_values(self.signal, obs), obs.counts, obs.valid)

    def fire_from(self, values: FloatArray, counts: IntArray, valid: BoolArray) -> BoolArray:
        """``batch`` from precomputed signal values."""
        v = np.nan_to_num(values, nan=-1.0)
        bound = np.full(counts.shape, np.inf)
        for step, threshold in self.thresholds.items():
            bound[counts == step] = threshold
        return ((v >= bound) | (counts >= self.cap)) & valid

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        return _may_reach(self.signal, obs, count, self.thresholds, self.cap)

    def check_mask(self, obs: Observations) -> BoolArray:
        counts = obs.counts
        steps = np.asarray(self.steps, dtype=np.int64)
        return np.asarray((np.isin(counts, steps) | (counts == self.cap)) & obs.valid, dtype=bool)

    def checkpoints(self, cap: int) -> tuple[int, ...]:
        return (*self.steps, self.cap)

    def remaining(self, obs: Observations) -> IntArray:
        _, n = _last(obs)
        want = np.minimum(next_step(n, self.steps), np.maximum(self.cap - n, 0))
        return np.asarray(np.where(_stopped(self.batch(obs)), 0, want), dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "thresholds": [[s, t] for s, t in self.thresholds.items()],
            "cap": self.cap,
            "signal": signal_to_dict(self.signal),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(steps_dict(data["thresholds"]), data["cap"], signal_from_dict(data["signal"]))


@dataclass(frozen=True)
class RemainingCurve:
    """Predicted remaining observations from certaindex h: ``f(h) = a * (1 - h) ** b`` (``form="power"``).

    f(1) = 0 (all agree: nothing more needed); f(0) = a. NaN h counts as 0. Fit with
    :func:`dynasor_client.calibration.fit_remaining_curve`.
    """

    a: float
    b: float
    form: str = "power"

    FORMS: ClassVar[tuple[str, ...]] = ("power",)

    def __post_init__(self) -> None:
        if self.form not in self.FORMS:
            raise ValueError(f"unknown curve form {self.form!r}; known: {self.FORMS}")
        if not (np.isfinite(self.a) and np.isfinite(self.b)) or self.a < 0 or self.b <= 0:
            raise ValueError(f"need a >= 0 and b > 0, got a={self.a}, b={self.b}")

    def __call__(self, h: FloatArray | float) -> FloatArray:
        x = np.clip(np.nan_to_num(np.asarray(h, dtype=np.float64), nan=0.0), 0.0, 1.0)
        return np.asarray(self.a * (1.0 - x) ** self.b, dtype=np.float64)

    @staticmethod
    def function(h: FloatArray, a: float, b: float) -> FloatArray:
        """The ``power`` form as a plain function (for ``scipy.optimize.curve_fit``)."""
        return np.asarray(a * (1.0 - np.clip(h, 0.0, 1.0)) ** b, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemainingCurve:
        return cls(float(data["a"]), float(data["b"]), str(data.get("form", "power")))


class _CurveRule(StopRule):
    """Shared by the curve-fit policies: ``_plan`` gives (stop, checkpoints, next target count)."""

    def __init__(
        self, detect: int, curve: RemainingCurve, cap: int, signal: Signal | None = None, scale: float = 1.0
    ) -> None:
        if not 1 <= detect <= cap:
            raise ValueError(f"need 1 <= detect <= cap, got detect={detect}, cap={cap}")
        if not scale >= 0:
            raise ValueError("scale must be >= 0")
        self.detect, self.curve, self.cap, self.scale = int(detect), curve, int(cap), float(scale)
        self.signal = signal or EntropyCertainty()

    def allocate(self, values: FloatArray, n: IntArray) -> IntArray:
        """More observations wanted at count ``n`` with signal ``values`` (capped at ``cap - n``)."""
        want = np.rint(self.scale * self.curve(values)).astype(np.int64)
        return np.asarray(np.clip(want, 0, np.maximum(self.cap - n, 0)), dtype=np.int64)

    def plan(
        self, values: FloatArray, counts: IntArray, valid: BoolArray
    ) -> tuple[BoolArray, BoolArray, IntArray]:
        """From signal values: (stop mask, checkpoint mask, target count per row)."""
        raise NotImplementedError

    def _plan(self, obs: Observations) -> tuple[BoolArray, BoolArray, IntArray]:
        return self.plan(_values(self.signal, obs), obs.counts, obs.valid)

    def batch(self, obs: Observations) -> BoolArray:
        return self._plan(obs)[0]

    def fire_from(self, values: FloatArray, counts: IntArray, valid: BoolArray) -> BoolArray:
        """``batch`` from precomputed signal values."""
        return self.plan(values, counts, valid)[0]

    def check_mask(self, obs: Observations) -> BoolArray:
        return self._plan(obs)[1]

    def checkpoints(self, cap: int) -> tuple[int, ...]:
        return tuple(range(self.detect, self.cap + 1))

    def remaining(self, obs: Observations) -> IntArray:
        fire, _, target = self._plan(obs)
        _, n = _last(obs)
        return np.asarray(np.where(_stopped(fire), 0, np.maximum(target - n, 0)), dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detect": self.detect,
            "curve": self.curve.to_dict(),
            "cap": self.cap,
            "scale": self.scale,
            "signal": signal_to_dict(self.signal),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(
            data["detect"],
            RemainingCurve.from_dict(data["curve"]),
            data["cap"],
            signal_from_dict(data["signal"]),
            data.get("scale", 1.0),
        )


class CurveFitAllocation(_CurveRule):
    """At ``detect`` observations, allocate ``r = round(scale * f(H~))`` more (``f`` a fitted
    :class:`RemainingCurve`) and stop when ``detect + r`` are in (at once when r = 0); two rounds."""

    kind = "curve_fit"

    def plan(
        self, values: FloatArray, counts: IntArray, valid: BoolArray
    ) -> tuple[BoolArray, BoolArray, IntArray]:
        b = counts.shape[0]
        target = np.full(b, self.detect, dtype=np.int64)
        at_detect = (counts == self.detect) & valid
        rows, cols = np.nonzero(at_detect)
        if len(rows):
            target[rows] = self.detect + self.allocate(values[rows, cols], np.full(len(rows), self.detect))
        fire = ((counts == target[:, None]) & (counts >= self.detect)) | (counts >= self.cap)
        fire &= valid
        return fire, (at_detect | fire) & valid, target


class DynamicCurveFit(_CurveRule):
    """From ``detect`` on, at each checkpoint allocate ``r = round(scale * f(H~))`` more with the
    latest H~; the next checkpoint is ``r`` observations later; stop when r = 0 or at the cap."""

    kind = "dynamic_curve_fit"

    def plan(
        self, values: FloatArray, counts: IntArray, valid: BoolArray
    ) -> tuple[BoolArray, BoolArray, IntArray]:
        b, k = counts.shape
        target = np.full(b, self.detect, dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        fire = np.zeros((b, k), dtype=bool)
        check = np.zeros((b, k), dtype=bool)
        for j in range(k):
            n = counts[:, j]
            here = valid[:, j] & ~done & (n == target)
            if not here.any():
                continue
            check[here, j] = True
            more = self.allocate(values[here, j], n[here])
            stop = (more == 0) | (n[here] >= self.cap)
            idx = np.flatnonzero(here)
            fire[idx[stop], j] = True
            done[idx[stop]] = True
            target[idx[~stop]] = n[here][~stop] + more[~stop]
        fire |= (counts >= self.cap) & valid
        return fire, check | fire, target


def remaining(rule: StopRule, obs: Observations) -> IntArray:
    """How many more observations each row wants before ``rule`` next decides (0 once stopped).

    Policies with a ``remaining`` method answer themselves; ``AnyOf`` takes the smallest of its parts
    (the next decision of any part), ``AllOf`` the largest; ``Cap`` its distance; ``Threshold`` the
    distance to its next checkpoint; anything else 1. ``NO_LIMIT`` means no part ever decides again.
    """
    stopped = _stopped(rule.batch(obs))
    _, n = _last(obs)
    own = getattr(rule, "remaining", None)
    if callable(own):
        want = np.asarray(own(obs), dtype=np.int64)
    elif isinstance(rule, AnyOf | AllOf):
        parts = np.stack([remaining(r, obs) for r in rule.rules])
        want = parts.min(axis=0) if isinstance(rule, AnyOf) else parts.max(axis=0)
    elif isinstance(rule, Cap):
        want = np.maximum(rule.n - n, 0)
    elif isinstance(rule, Threshold):
        nxt = np.maximum(n + 1, rule.min_obs)
        if rule.at is not None:
            want = next_step(n, rule.at)
        elif rule.every is not None:
            want = ((nxt + rule.every - 1) // rule.every) * rule.every - n
        else:
            want = nxt - n
    else:
        want = np.ones_like(n)
    return np.asarray(np.where(stopped, 0, want), dtype=np.int64)
