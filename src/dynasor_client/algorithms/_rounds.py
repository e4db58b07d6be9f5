"""Rounds of a sampling program: how many samples each sequential round draws.

:func:`round_sizes` plans the rounds; :class:`RoundPlan` follows that plan while the program's
deadline allows it. A program with a deadline measures each round as it goes; when the time left
holds fewer rounds than are planned, the last round that fits draws every remaining sample at once
(the same samples, fewer sequential rounds: latency is per round, not per sample), and when not
even one more round fits the plan ends early (``out_of_time``): the answer so far comes back now,
not at the deadline, and the server stops spending tokens on a program that would miss anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from ..certainty import StopRule
from ..certainty.calibration import checkpoints

if TYPE_CHECKING:
    from ._program import ProgramContext

RoundSchedule = Literal["auto", "detect", "doubling", "one"] | Sequence[int]


def round_sizes(schedule: RoundSchedule, n: int, detect: int = 5, rule: StopRule | None = None) -> list[int]:
    """Samples per round, summing to ``n``: ``"auto"`` = one round per point where ``rule`` may fire
    (so no sample is drawn past a check that would have stopped), ``"detect"`` = detect then the
    rest (the paper), ``"doubling"`` = detect, then doubling, ``"one"`` = one at a time, or sizes."""
    if schedule == "auto":
        if rule is None:
            raise ValueError("round schedule 'auto' needs the stop rule")
        points = checkpoints(rule, n)
        sizes = [b - a for a, b in zip((0, *points), points, strict=False)]
    elif schedule == "detect":
        sizes = [detect, n - detect]
    elif schedule == "doubling":
        sizes, size = [], detect
        while sum(sizes) < n:
            sizes.append(size)
            size *= 2
    elif schedule == "one":
        sizes = [1] * n
    elif isinstance(schedule, str):
        raise ValueError(f"unknown round schedule {schedule!r}: 'detect', 'doubling', 'one' or sizes")
    else:
        sizes = list(schedule)
    out, total = [], 0
    for size in sizes:
        if size < 1 and total < n:
            raise ValueError(f"round sizes must be >= 1, got {list(sizes)}")
        take = min(size, n - total)
        if take > 0:
            out.append(take)
            total += take
    if total < n:
        out.append(n - total)
    return out


class RoundPlan:
    """Iterate the sizes of the rounds, fitted to the deadline of ``context`` (module docs).

    A round is assumed to last ``margin`` times the previous one (queueing included): a round's
    latency is that of its longest sample, and the longest of many draws runs longer than the
    longest of a few (on the SVAMP train traces, the longest of 26 samples is 1.2x the longest of
    the first 4, on average). The first round always runs as planned, and without a deadline the
    plan is followed exactly.
    """

    def __init__(self, sizes: Sequence[int], context: ProgramContext, *, margin: float = 1.25) -> None:
        if any(size < 1 for size in sizes):
            raise ValueError(f"round sizes must be >= 1, got {list(sizes)}")
        if not margin >= 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.planned, self.margin = tuple(sizes), margin
        self.out_of_time = False  #: the plan ended because no further round fits the deadline
        self.merged = 0  #: planned rounds folded into a later one to meet the deadline
        self._context = context

    def __iter__(self) -> Iterator[int]:
        pending, last_round_s = list(self.planned), None
        while pending:
            left = self._context.seconds_left()
            if left is not None and last_round_s is not None and last_round_s > 0:
                fits = int(left // (last_round_s * self.margin))
                if fits < 1:
                    self.out_of_time = True
                    return
                if fits < len(pending):
                    self.merged += len(pending) - fits
                    pending = [*pending[: fits - 1], sum(pending[fits - 1 :])]
            yield pending.pop(0)
            after = self._context.seconds_left()
            if left is not None and after is not None:
                last_round_s = left - after
