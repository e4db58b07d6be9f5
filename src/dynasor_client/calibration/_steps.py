"""Per-step threshold rules, fitted fast: binned signal tables and exact coordinate descent.

A multi-step rule stops a row at the first step (observation count) where its signals meet that
step's thresholds — one signal, or two that must both ("all") or either ("any") pass — or where a
hopeless cut fires (signal still *below* a bound). :class:`StepTable` bins a signal's values at the
steps once, on every replayed row (no labels), so candidate thresholds are exact observed midpoints
and a rule built from them (:class:`StepRuleFitted.rule`) reproduces the table's decisions exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..certainty import (
    AllOf,
    AnyOf,
    BoolArray,
    Cap,
    FloatArray,
    Hopeless,
    IntArray,
    MultiStepThreshold,
    Signal,
    StaticThreshold,
    StopRule,
)

if TYPE_CHECKING:
    from ._search import SearchSpace, View

Mode = Literal["all", "any"]
#: What a fitted threshold tries to keep, per row: agreement with the full-budget answer (no gold
#: needed), "no_loss" (never lose a correct full-budget answer; lucky gains do not count), accuracy.
Target = Literal["agreement", "no_loss", "accuracy"]

MAX_GRID = 48


def threshold_grid(values: FloatArray, max_size: int = MAX_GRID) -> FloatArray:
    """Candidate thresholds for finite ``values``: one per distinct value (up to ``max_size``, chosen
    at quantiles), placed midway below it, so a threshold separates distinct values robustly.

    Values equal to 9 decimals count as one (the same answer split can give entropies that differ
    in the last bit). The first threshold is at most the smallest value (fires for every value).
    """
    if values.size == 0:
        return np.array([0.0])
    ordered = np.sort(values)
    keys = np.round(ordered, 9)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])  # first index of each distinct value
    if len(starts) > max_size:
        wanted = np.quantile(np.arange(len(ordered)), np.linspace(0.0, 1.0, max_size), method="nearest")
        starts = np.unique(starts[np.searchsorted(starts, wanted, side="right") - 1])
    lo = ordered[starts]  # smallest member of each chosen value
    below = np.r_[lo[0], ordered[np.maximum(starts[1:] - 1, 0)]]  # largest value under it
    mid = (below + lo) / 2.0
    rounded = np.round(mid, 6)
    mid = np.where((rounded > below) & (rounded <= lo), rounded, mid)
    first = round(float(lo[0]), 6)
    mid[0] = first if first <= lo[0] else lo[0]
    return np.asarray(mid, dtype=np.float64)


@dataclass(eq=False)
class StepTable:
    """A signal's values at some steps, binned: ``V >= grids[j][i]`` iff ``idx[:, j] >= i`` (NaN: -1)."""

    signal: Signal
    steps: tuple[int, ...]
    grids: list[FloatArray]
    idx: IntArray

    @classmethod
    def build(cls, values: FloatArray, valid: BoolArray, signal: Signal, steps: tuple[int, ...]) -> StepTable:
        grids: list[FloatArray] = []
        idx = np.full((values.shape[0], len(steps)), -1, dtype=np.int64)
        for j, step in enumerate(steps):
            col = values[:, step - 1]
            ok = np.isfinite(col) & valid[:, step - 1]
            grid = threshold_grid(col[ok])
            grids.append(grid)
            binned = np.searchsorted(grid, np.where(ok, col, -np.inf), side="right") - 1
            idx[:, j] = np.where(ok, binned, -1)
        return cls(signal, steps, grids, idx)

    def sizes(self) -> IntArray:
        return np.array([len(g) for g in self.grids], dtype=np.int64)


@dataclass(eq=False)
class StepParams:
    """Threshold indices per step: ``upper[g][j]`` in 0..G (G: never), ``lower[j]`` in 0..G-1 (0: never)."""

    upper: list[IntArray]
    lower: IntArray | None

    def copy(self) -> StepParams:
        return StepParams([u.copy() for u in self.upper], None if self.lower is None else self.lower.copy())


class StepRuleFitted:
    """Fitted per-step thresholds: scores rows from the tables, and builds the equivalent rule."""

    def __init__(
        self,
        tables: Sequence[StepTable],
        lower_table: StepTable | None,
        params: StepParams,
        mode: Mode,
        cap: int,
        static: bool = False,
    ) -> None:
        self.tables, self.lower_table, self.params = list(tables), lower_table, params
        self.mode, self.cap, self.static = mode, cap, static

    def _upper_live(self) -> BoolArray:
        """Per step: whether the signal thresholds can fire there at all."""
        live = [u < t.sizes() for u, t in zip(self.params.upper, self.tables, strict=True)]
        combine = np.logical_and if self.mode == "all" else np.logical_or
        return np.asarray(combine.reduce(live), dtype=bool)

    def _lower_live(self) -> BoolArray:
        if self.params.lower is None:
            return np.zeros(len(self.tables[0].steps), dtype=bool)
        return np.asarray(self.params.lower > 0, dtype=bool)

    def active_steps(self) -> list[int]:
        live = self._upper_live() | self._lower_live()
        return [s for s, a in zip(self.tables[0].steps, live, strict=True) if a]

    def stops(self, view: View) -> tuple[IntArray, IntArray]:
        steps = np.asarray(self.tables[0].steps, dtype=np.int64)
        valid = view.valid
        conds = [t.idx[view.rows] >= u[None, :] for t, u in zip(self.tables, self.params.upper, strict=True)]
        fire = np.logical_and.reduce(conds) if self.mode == "all" else np.logical_or.reduce(conds)
        if self.lower_table is not None and self.params.lower is not None:
            li = self.lower_table.idx[view.rows]
            fire = fire | ((li >= 0) & (li < self.params.lower[None, :]))
        fire = fire & valid[:, steps - 1]
        stop = np.where(fire.any(axis=1), steps[np.argmax(fire, axis=1)] - 1, view.last)
        check = np.isin(view.counts, np.asarray([*self.active_steps(), self.cap], dtype=np.int64)) & valid
        stop = np.asarray(stop, dtype=np.int64)
        return stop, view.rounds(check, stop)

    def rule(self) -> StopRule:
        steps = self.tables[0].steps
        upper_live = self._upper_live()
        if self.static:
            live = np.flatnonzero(upper_live)
            if len(live) == 0:
                return Cap(self.cap)
            j = int(live[0])
            table = self.tables[0]
            return StaticThreshold(
                steps[j], float(table.grids[j][self.params.upper[0][j]]), self.cap, table.signal
            )
        uppers: list[StopRule] = []
        for table, u in zip(self.tables, self.params.upper, strict=True):
            size = table.sizes()
            # "all": every signal needs an entry at each live step (its lowest threshold when unset);
            # "any": a signal only at the steps where it can fire itself.
            keep = [j for j in np.flatnonzero(upper_live) if self.mode == "all" or u[j] < size[j]]
            if keep:
                thresholds = {steps[j]: float(table.grids[j][min(int(u[j]), int(size[j]) - 1)]) for j in keep}
                uppers.append(MultiStepThreshold(thresholds, self.cap, table.signal))
        parts: list[StopRule] = []
        if len(uppers) > 1:
            parts.append(AllOf(uppers) if self.mode == "all" else AnyOf(uppers))
        elif uppers:
            parts.append(uppers[0])
        else:
            parts.append(Cap(self.cap))
        if self.lower_table is not None and self.params.lower is not None and self._lower_live().any():
            grids = self.lower_table.grids
            below = {steps[j]: float(grids[j][int(lv)]) for j, lv in enumerate(self.params.lower) if lv > 0}
            parts.append(Hopeless(below=below, signal=self.lower_table.signal))
        return parts[0] if len(parts) == 1 else AnyOf(parts)


def _best_index(total: FloatArray, prefer_high: bool) -> int:
    """argmin of ``total`` with ties going to the highest (or lowest) index."""
    hits = np.flatnonzero(total <= float(total.min()) + 1e-9)
    return int(hits[-1] if prefer_high else hits[0])


def good_matrix(space: SearchSpace, target: Target) -> BoolArray:
    """``[B, K]``: whether stopping there is good for ``target`` (see :data:`Target`)."""
    replay = space.replay
    if target == "agreement":
        return np.asarray(replay.agree, dtype=bool)
    if target == "no_loss":
        full_correct = replay.correct[np.arange(replay.rows), replay.last]
        return np.asarray(~(full_correct[:, None] & ~replay.correct), dtype=bool)
    return replay.correct


def fit_step_thresholds(
    view: View,
    tables: Sequence[StepTable],
    lower_table: StepTable | None,
    *,
    mode: Mode,
    lam: float,
    cost_of: Literal["tokens", "samples"] = "tokens",
    target: Target = "agreement",
    init: StepParams | None = None,
    sweeps: int = 6,
) -> StepParams:
    """Coordinate descent on per-step thresholds minimising ``mean(cost / full cost - lam * good)``.

    ``good`` per row and stop is given by ``target`` (default: agreement with the full-budget answer,
    which needs no gold and cannot chase lucky early answers, so it generalises better). Each
    coordinate (one signal's threshold, or the cut, at one step) is set to its exact optimum given the
    others from binned sums over the rows that reach that step; ties go to the more conservative
    threshold. Starts from ``init`` (default: never stop, the full budget; in "all" mode the second
    signal starts at "always passes") and sweeps until stable.
    """
    replay, rows = view.replay, view.rows
    steps = np.asarray(tables[0].steps, dtype=np.int64)
    m, n, n_sig = len(steps), len(rows), len(tables)
    amount = replay.spent if cost_of == "tokens" else replay.counts
    last = view.last
    full = float(amount[rows, last].mean()) or 1.0
    good = good_matrix(view.space, target)
    pos = steps - 1
    cost_s = np.ascontiguousarray((amount[rows][:, pos] / full - lam * good[rows][:, pos]).T)  # [m, n]
    cost_e = amount[rows, last] / full - lam * good[rows, last]
    valid_s = np.ascontiguousarray(view.valid[:, pos].T)
    idx = [np.ascontiguousarray(t.idx[rows].T) for t in tables]
    sizes = [t.sizes() for t in tables]
    lidx = np.ascontiguousarray(lower_table.idx[rows].T) if lower_table is not None else None
    lower_sizes = lower_table.sizes() if lower_table is not None else None
    if init is not None:
        params = init.copy()
    else:  # never stop; in "all" mode the other signals start at "always pass" so the first can move
        upper = (
            [sizes[0].copy(), *(np.zeros(m, dtype=np.int64) for _ in sizes[1:])] if mode == "all" else None
        )
        params = StepParams(
            upper or [s.copy() for s in sizes], np.zeros(m, dtype=np.int64) if lidx is not None else None
        )
    up_c = [idx[g] >= params.upper[g][:, None] for g in range(n_sig)]  # [m, n] each
    if lidx is not None and params.lower is not None:
        low_c = (lidx >= 0) & (lidx < params.lower[:, None])
    else:
        low_c = np.zeros((m, n), dtype=bool)
    combine = np.logical_and if mode == "all" else np.logical_or

    def fire_row(j: int) -> BoolArray:
        up = up_c[0][j] if n_sig == 1 else combine.reduce([c[j] for c in up_c])
        return np.asarray((up | low_c[j]) & valid_s[j], dtype=bool)

    for _ in range(sweeps):
        changed = False
        fire = np.stack([fire_row(j) for j in range(m)])
        # next_cost[j]: cost of the first firing step after j (or the end), with current params
        next_cost = np.empty((m, n))
        nxt = cost_e.copy()
        for j in range(m - 1, -1, -1):
            next_cost[j] = nxt
            nxt = np.where(fire[j], cost_s[j], nxt)
        reach = np.ones(n, dtype=bool)
        for j in range(m):
            here = np.flatnonzero(reach & valid_s[j])
            if here.size:
                delta = (cost_s[j] - next_cost[j])[here]  # change in cost if the row stops here
                for g in range(n_sig):
                    others = [up_c[h][j][here] for h in range(n_sig) if h != g]
                    fixed = low_c[j][here]
                    if mode == "all":
                        live = ~fixed if not others else (~fixed & np.logical_and.reduce(others))
                    else:
                        live = ~fixed if not others else (~fixed & ~np.logical_or.reduce(others))
                    col = idx[g][j][here]
                    live &= col >= 0
                    size = int(sizes[g][j])
                    gain = np.bincount(col[live], weights=delta[live], minlength=size)[:size]
                    # threshold index i fires rows with idx >= i: the change is a suffix sum
                    best = _best_index(np.r_[np.cumsum(gain[::-1])[::-1], 0.0], prefer_high=True)
                    if best != params.upper[g][j]:
                        params.upper[g][j], changed = best, True
                        up_c[g][j] = idx[g][j] >= best
                if lidx is not None and params.lower is not None and lower_sizes is not None:
                    up = up_c[0][j][here] if n_sig == 1 else combine.reduce([c[j][here] for c in up_c])
                    col = lidx[j][here]
                    live = ~up & (col >= 0)
                    size = int(lower_sizes[j])
                    gain = np.bincount(col[live], weights=delta[live], minlength=size)[:size]
                    # index l fires rows with idx < l: a prefix sum (l = size, cut everyone, excluded)
                    best = _best_index(np.r_[0.0, np.cumsum(gain)][:size], prefer_high=False)
                    if best != params.lower[j]:
                        params.lower[j], changed = best, True
                        low_c[j] = (lidx[j] >= 0) & (lidx[j] < best)
            reach &= ~fire_row(j)
        if not changed:
            break
    return params
