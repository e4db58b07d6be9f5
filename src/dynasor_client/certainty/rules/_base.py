"""What every stop rule is: the :class:`StopRule` base, ``&`` and ``|`` (:class:`AllOf`,
:class:`AnyOf`), and rules by kind for JSON (:func:`rule_from_dict`).

A rule answers "stop now?" for a program (``rule(obs)``) and, for calibration, after every prefix
of many replayed sample orders at once (``rule.batch(obs)``, a ``[B, K]`` boolean array). Every
rule serialises to JSON (``to_dict`` / :func:`rule_from_dict`) so a calibrated rule can be saved,
shipped and loaded; each subclass with a ``kind`` registers itself under it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from .._observations import BoolArray, IntArray, Observations

RuleReason = Literal["confident", "cap", "hopeless", "budget"]
"""Why a rule stops a program: each rule carries its own (a program's ``StopReason`` of that name)."""

_RULES: dict[str, type[StopRule]] = {}


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
