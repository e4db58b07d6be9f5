"""Stop rules: tiny composable policy objects, in the spirit of tenacity's stop strategies.

    rule = cap(30) | (entropy_at_least(0.7, at=[5]) & reward_at_least(0.4)) | hopeless(after=16, below=0.2)

A rule answers "stop now?" for a program (``rule(obs)``) and, for calibration, after every prefix
of many replayed sample orders at once (``rule.batch(obs)``, a ``[B, K]`` boolean array). ``&`` and
``|`` combine rules; the cap and the budget are rules of the same kind. Every rule serialises to
JSON (``to_dict`` / :func:`rule_from_dict`) so a calibrated rule can be saved, shipped and loaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from ._observations import BoolArray, FloatArray, IntArray, Observations
from ._signal import EntropyCertainty, Signal

RuleReason = Literal["confident", "cap", "hopeless", "budget"]
"""Why a rule stops a program: each rule carries its own (a program's ``StopReason`` of that name)."""

_RULES: dict[str, type[StopRule]] = {}
_SIGNALS: dict[str, Callable[..., Signal]] = {"entropy": EntropyCertainty}


#: ``remaining`` of a rule that has no further checkpoint of its own (it never asks for more).
NO_LIMIT = np.iinfo(np.int64).max


def next_step(n: IntArray, steps: tuple[int, ...]) -> IntArray:
    """Distance from counts ``n`` to the next of ``steps`` (``NO_LIMIT`` when none is left)."""
    arr = np.asarray(steps, dtype=np.int64)
    pos = np.searchsorted(arr, n, side="right")
    nxt = np.where(pos < len(arr), arr[np.minimum(pos, len(arr) - 1)] - n, NO_LIMIT)
    return np.asarray(nxt, dtype=np.int64)


def steps_dict(raw: Mapping[int, float] | Any) -> dict[int, float]:
    """``{count: threshold}`` from a mapping or pairs, checked and sorted."""
    items = raw.items() if isinstance(raw, Mapping) else raw
    out = {int(k): float(v) for k, v in items}
    for step, value in out.items():
        if step < 1:
            raise ValueError(f"steps are observation counts >= 1, got {step}")
        if not np.isfinite(value):
            raise ValueError(f"threshold at step {step} must be finite, got {value}")
    return dict(sorted(out.items()))


def register_signal(name: str, factory: Callable[..., Signal]) -> None:
    """Make a signal loadable from JSON by ``name`` (built-in signals register themselves)."""
    _SIGNALS[name] = factory


def registered_signals() -> dict[str, Callable[..., Signal]]:
    """Every signal loadable by name (the candidates calibration tries)."""
    return dict(_SIGNALS)


def signal_from_dict(data: dict[str, Any]) -> Signal:
    try:
        factory = _SIGNALS[data["name"]]
    except KeyError as exc:
        raise ValueError(f"unknown signal {data.get('name')!r}; known: {sorted(_SIGNALS)}") from exc
    return factory(**data.get("params", {}))


def signal_to_dict(signal: Signal) -> dict[str, Any]:
    return {"name": signal.name, "params": signal.params()}


class StopRule(ABC):
    """Base class: ``rule(obs) -> bool`` for one program, ``rule.batch(obs)`` for many."""

    kind: ClassVar[str]
    reason: ClassVar[RuleReason] = "confident"
    """What it means when this rule stops a program."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _RULES[cls.kind] = cls

    @abstractmethod
    def batch(self, obs: Observations) -> BoolArray:
        """``out[b, k]``: stop after the first k+1 observations of row b."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule: ...

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        """``[B]``: whether the rule could fire once row b holds ``count`` observations, whatever the
        ones still to come (True wherever the rule cannot tell). A program skips a check at which
        its rule cannot fire: it would not have stopped there, so it draws the same samples in
        fewer rounds."""
        return np.ones(obs.shape[0], dtype=bool)

    def __call__(self, obs: Observations) -> bool:
        if obs.shape[0] != 1:
            raise ValueError("call a rule on one program (B = 1); use .batch() for many")
        if not obs.valid.any():
            return False
        last = int(np.flatnonzero(obs.valid[0])[-1])
        return bool(self.batch(obs)[0, last])

    def fired(self, obs: Observations) -> RuleReason | None:
        """Why this rule stops the program now (its :attr:`reason`), or None to go on."""
        return self.reason if self(obs) else None

    def __and__(self, other: StopRule) -> StopRule:
        return AllOf([*_parts(self, AllOf), *_parts(other, AllOf)])

    def __or__(self, other: StopRule) -> StopRule:
        return AnyOf([*_parts(self, AnyOf), *_parts(other, AnyOf)])

    def __repr__(self) -> str:
        return f"rule_from_dict({self.to_dict()!r})"


def _parts(rule: StopRule, kind: type[AllOf] | type[AnyOf]) -> list[StopRule]:
    return list(rule.rules) if isinstance(rule, kind) else [rule]


class _Combination(StopRule):
    """Rules joined by a logical operator."""

    _combine: ClassVar[np.ufunc]

    def __init__(self, rules: Sequence[StopRule]) -> None:
        if not rules:
            raise ValueError(f"{type(self).__name__} needs at least one rule")
        self.rules = tuple(rules)

    def batch(self, obs: Observations) -> BoolArray:
        return np.asarray(self._combine.reduce([r.batch(obs) for r in self.rules]), dtype=bool)

    def may_fire(self, obs: Observations, count: int) -> BoolArray:
        return np.asarray(self._combine.reduce([r.may_fire(obs, count) for r in self.rules]), dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls([rule_from_dict(r) for r in data["rules"]])


class AllOf(_Combination):
    """Stop when every rule says stop (``a & b``); the reason is the first rule's."""

    kind = "all"
    _combine = np.logical_and

    def fired(self, obs: Observations) -> RuleReason | None:
        reasons = []
        for rule in self.rules:
            if (reason := rule.fired(obs)) is None:
                return None
            reasons.append(reason)
        return reasons[0]


class AnyOf(_Combination):
    """Stop when any rule says stop (``a | b``); the reason is the first firing rule's."""

    kind = "any"
    _combine = np.logical_or

    def fired(self, obs: Observations) -> RuleReason | None:
        return next((reason for rule in self.rules if (reason := rule.fired(obs)) is not None), None)


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


def rule_from_dict(data: dict[str, Any]) -> StopRule:
    """Rebuild a rule saved with ``to_dict`` (calibration JSON)."""
    try:
        cls = _RULES[data["kind"]]
    except KeyError as exc:
        raise ValueError(f"unknown rule kind {data.get('kind')!r}; known: {sorted(_RULES)}") from exc
    return cls.from_dict(data)


def first_stop(mask: BoolArray, valid: BoolArray) -> IntArray:
    """Index of the first True per row (the last valid position where the rule never fires)."""
    last_valid = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    fired = mask.any(axis=1)
    return np.asarray(np.where(fired, np.argmax(mask, axis=1), last_valid), dtype=np.int64)


# -- the vocabulary users write rules in ------------------------------------------------------------


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
