"""Scheduling policies: which waiting program's requests go out next.

A policy gives each waiting program a key when its requests join the queue; the smallest key goes
first. Keys are in seconds so that policies add up: ``shortest_remaining_work() + aging(0.5)``
serves short programs first, but a program that has waited two seconds gains one second. Every key
is fixed when it is computed (aging adds ``rate x the time it joined``, which orders exactly like
subtracting ``rate x the time waited``), so the queue is a heap: O(log n) per decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._states import ProgramRecord

_NO_DEADLINE = 1e12  # after every real deadline


class SchedulingPolicy:
    """Base of the policies: ``key(program, now)``, smaller first; compose with ``+`` and ``*``."""

    def key(self, program: ProgramRecord, now: float) -> float:
        raise NotImplementedError

    def __add__(self, other: SchedulingPolicy) -> SchedulingPolicy:
        return Sum((*_parts(self), *_parts(other)))

    def __rmul__(self, weight: float) -> SchedulingPolicy:
        return Weighted(self, float(weight))


def _parts(policy: SchedulingPolicy) -> tuple[SchedulingPolicy, ...]:
    return policy.policies if isinstance(policy, Sum) else (policy,)


@dataclass(frozen=True, slots=True)
class Sum(SchedulingPolicy):
    policies: tuple[SchedulingPolicy, ...]

    def key(self, program: ProgramRecord, now: float) -> float:
        return sum(p.key(program, now) for p in self.policies)


@dataclass(frozen=True, slots=True)
class Weighted(SchedulingPolicy):
    policy: SchedulingPolicy
    weight: float

    def key(self, program: ProgramRecord, now: float) -> float:
        return self.weight * self.policy.key(program, now)


@dataclass(frozen=True, slots=True)
class FirstComeFirstServed(SchedulingPolicy):
    """By program arrival: with gang dispatch, application-level FIFO (Parrot-like)."""

    def key(self, program: ProgramRecord, now: float) -> float:
        return program.arrival


@dataclass(frozen=True, slots=True)
class ShortestRemainingWork(SchedulingPolicy):
    """By estimated remaining work (seconds): certaindex says a sure program is nearly done."""

    def key(self, program: ProgramRecord, now: float) -> float:
        return program.remaining_seconds()


@dataclass(frozen=True, slots=True)
class LeastLaxity(SchedulingPolicy):
    """By laxity: deadline minus the estimated time to finish (programs without a deadline last)."""

    def key(self, program: ProgramRecord, now: float) -> float:
        if program.deadline is None:
            return _NO_DEADLINE
        return program.deadline - program.time_to_finish()


@dataclass(frozen=True, slots=True)
class Aging(SchedulingPolicy):
    """Starvation prevention: each second waited is worth ``rate`` seconds of key."""

    rate: float = 0.5

    def key(self, program: ProgramRecord, now: float) -> float:
        return self.rate * now


@dataclass(frozen=True, slots=True)
class DemoteInfeasible(SchedulingPolicy):
    """Deadline awareness: a program that can no longer meet its deadline yields to those that can."""

    penalty_s: float = 1e6

    def key(self, program: ProgramRecord, now: float) -> float:
        if program.deadline is not None and now + program.time_to_finish() > program.deadline:
            return self.penalty_s
        return 0.0


def fcfs() -> SchedulingPolicy:
    return FirstComeFirstServed()


def shortest_remaining_work() -> SchedulingPolicy:
    return ShortestRemainingWork()


def least_laxity() -> SchedulingPolicy:
    return LeastLaxity()


def aging(rate: float = 0.5) -> SchedulingPolicy:
    if rate < 0:
        raise ValueError(f"aging rate must be >= 0, got {rate}")
    return Aging(rate)


def demote_infeasible(penalty_s: float = 1e6) -> SchedulingPolicy:
    return DemoteInfeasible(penalty_s)


def dynasor() -> SchedulingPolicy:
    """The default: shortest remaining work (from certaindex), aging, deadline awareness."""
    return shortest_remaining_work() + aging(0.5) + demote_infeasible()
