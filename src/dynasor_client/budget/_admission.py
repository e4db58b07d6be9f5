"""Admission control: admit, shrink or refuse a program given its deadline and the current load.

The load is summarised as the work already promised (estimated remaining tokens of every active
program) and the throughput the runtime measured recently. A program is feasible when the backlog
plus its own expected tokens drain before its deadline at that throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Load:
    """The runtime's load when a program arrives."""

    backlog_tokens: float  # estimated tokens still to generate for the active programs
    throughput_tps: float | None  # tokens per second measured recently (None: not yet known)
    active: int


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What admission control knows of an arriving program."""

    deadline_s: float | None
    expected_tokens: float
    token_cap: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    """Admit (possibly with a smaller token cap) or reject, with the reason."""

    admit: bool
    token_cap: int | None = None
    reason: str = ""


class AdmissionPolicy(Protocol):
    def __call__(self, request: AdmissionRequest, load: Load) -> Decision: ...


def _finish_s(request: AdmissionRequest, load: Load, tokens: float) -> float | None:
    if load.throughput_tps is None or load.throughput_tps <= 0:
        return None
    return (load.backlog_tokens + tokens) / load.throughput_tps


@dataclass(frozen=True, slots=True)
class AdmitAll:
    def __call__(self, request: AdmissionRequest, load: Load) -> Decision:
        return Decision(True, request.token_cap)


@dataclass(frozen=True, slots=True)
class RejectInfeasible:
    """Reject a program predicted to finish later than ``slack`` times its deadline."""

    slack: float = 1.0

    def __call__(self, request: AdmissionRequest, load: Load) -> Decision:
        finish = _finish_s(request, load, request.expected_tokens)
        if request.deadline_s is None or finish is None or finish <= request.deadline_s * self.slack:
            return Decision(True, request.token_cap)
        return Decision(
            False,
            reason=f"predicted to finish in {finish:.1f} s, after its {request.deadline_s:.1f} s deadline "
            f"({load.backlog_tokens:.0f} tokens queued at {load.throughput_tps:.0f} tokens/s)",
        )


@dataclass(frozen=True, slots=True)
class DegradeInfeasible:
    """Shrink the token cap of a program that would miss its deadline so that it fits; reject it
    when the cap would fall under ``min_fraction`` of its expected tokens."""

    min_fraction: float = 0.25

    def __call__(self, request: AdmissionRequest, load: Load) -> Decision:
        finish = _finish_s(request, load, request.expected_tokens)
        if request.deadline_s is None or finish is None or finish <= request.deadline_s:
            return Decision(True, request.token_cap)
        assert load.throughput_tps is not None
        fits = load.throughput_tps * request.deadline_s - load.backlog_tokens
        if fits < self.min_fraction * request.expected_tokens:
            return Decision(False, reason=f"only {max(fits, 0):.0f} tokens fit before its deadline")
        cap = int(fits) if request.token_cap is None else min(request.token_cap, int(fits))
        return Decision(True, cap, reason=f"degraded to {cap} tokens to meet its deadline")


def admit_all() -> AdmitAll:
    return AdmitAll()


def reject_infeasible(slack: float = 1.0) -> RejectInfeasible:
    return RejectInfeasible(slack)


def degrade_infeasible(min_fraction: float = 0.25) -> DegradeInfeasible:
    return DegradeInfeasible(min_fraction)
