"""Candidate families for the search: each yields *recipes* (a way to turn training rows into a rule).

- :class:`StaticFamily` — the paper's static threshold: one detect step, one threshold (grid).
- :class:`MultiStepFamily` — per-step thresholds on one signal, then on pairs of the best signals
  (both must pass, or either), each with or without a per-step hopeless cut; thresholds fitted by
  coordinate descent for each ``lambda`` on a grid (warm-started along the grid).
- :class:`CurveFitFamily` / :class:`DynamicCurveFitFamily` — the paper's curve-fit allocation, once at
  the detect step or again at every checkpoint, with curves fitted by scipy.

Write a new family by subclassing :class:`Family` (``recipes(space)``) and :class:`Recipe`
(``params``, ``fit(view) -> Fitted``); :class:`Fitted` gives per-row stops and the rule. A new
*signal* needs no new family: every family tries every signal in ``space.signals``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..certainty import CurveFitAllocation, DynamicCurveFit, IntArray, RemainingCurve, Signal, StopRule
from ..certainty.rules import first_stop
from ..certainty.signals import signal_to_dict
from ._curves import fit_remaining_curve, settle_counts
from ._steps import Mode, StepParams, StepRuleFitted, Target, fit_step_thresholds

if TYPE_CHECKING:
    from ._search import SearchSpace, View


def signal_key(signal: Signal) -> str:
    return json.dumps(signal_to_dict(signal), sort_keys=True)


class Fitted(ABC):
    """A recipe fitted on some rows: scores rows fast and builds the (equivalent) rule."""

    @abstractmethod
    def stops(self, view: View) -> tuple[IntArray, IntArray]:
        """Stop position and rounds per row of ``view`` (exactly what the rule gives there)."""

    @abstractmethod
    def rule(self) -> StopRule: ...


class Recipe(ABC):
    """How a family turns data into a rule; ``params`` (JSON-able) describe the recipe itself."""

    family: str = "custom"
    #: False when ``fit`` ignores the data (then cross-validation is skipped: in-sample is out-of-sample)
    needs_fit: bool = True

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]: ...

    @abstractmethod
    def fit(self, view: View) -> Fitted: ...

    def describe(self) -> str:
        return f"{self.family}({', '.join(f'{k}={v}' for k, v in self.params.items())})"


class Family(ABC):
    """A source of candidate recipes (may look at ``space.leaderboard``: what scored so far)."""

    name: str = "custom"

    @abstractmethod
    def recipes(self, space: SearchSpace) -> Iterable[Recipe]: ...


class _StepFitted(Fitted):
    def __init__(self, inner: StepRuleFitted) -> None:
        self.inner = inner

    def stops(self, view: View) -> tuple[IntArray, IntArray]:
        return self.inner.stops(view)

    def rule(self) -> StopRule:
        return self.inner.rule()


# -- static ----------------------------------------------------------------------------------------------


class _StaticRecipe(Recipe):
    family = "static"
    needs_fit = False

    def __init__(self, space: SearchSpace, signal: Signal, detect: int, index: int) -> None:
        self.space, self.signal, self.detect, self.index = space, signal, detect, index
        self.table = space.table(signal, (detect,))

    @property
    def params(self) -> dict[str, Any]:
        return {
            "signal": self.signal.name,
            "detect": self.detect,
            "threshold": float(self.table.grids[0][self.index]),
        }

    def fit(self, view: View) -> Fitted:
        params = StepParams([np.array([self.index], dtype=np.int64)], None)
        return _StepFitted(StepRuleFitted([self.table], None, params, "all", self.space.cap, static=True))


class StaticFamily(Family):
    """The paper's static threshold: stop at ``detect`` if signal >= threshold, else run to the cap."""

    name = "static"

    def __init__(self, detects: Sequence[int] = (2, 3, 4, 5, 6, 7, 8, 10, 12, 15)) -> None:
        self.detects = tuple(detects)

    def recipes(self, space: SearchSpace) -> Iterator[Recipe]:
        for signal in space.signals:
            for detect in self.detects:
                if detect < space.cap:
                    for index in range(len(space.table(signal, (detect,)).grids[0])):
                        yield _StaticRecipe(space, signal, detect, index)


# -- multi-step --------------------------------------------------------------------------------------------


class _StepRecipe(Recipe):
    family = "multi_step"

    def __init__(
        self,
        space: SearchSpace,
        signals: Sequence[Signal],
        mode: Mode,
        schedule: tuple[int, ...],
        hopeless: bool,
        lam: float,
        lambdas: Sequence[float],
        target: Target,
        cost_of: Literal["tokens", "samples"] = "tokens",
    ) -> None:
        self.space, self.signals, self.mode, self.schedule = space, list(signals), mode, schedule
        self.hopeless, self.lam, self.lambdas, self.target, self.cost_of = (
            hopeless,
            lam,
            tuple(lambdas),
            target,
            cost_of,
        )
        self.tables = [space.table(s, schedule) for s in signals]

    @property
    def params(self) -> dict[str, Any]:
        return {
            "signals": [s.name for s in self.signals],
            "mode": self.mode,
            "steps": list(self.schedule),
            "hopeless": self.hopeless,
            "lambda": round(self.lam, 4),
            "target": self.target,
        }

    def fit(self, view: View) -> Fitted:
        # All lambdas of one group are fitted together, most conservative first, each warm-started
        # from the previous solution (fewer sweeps), and cached per view.
        key = (
            "steps",
            tuple(signal_key(s) for s in self.signals),
            self.mode,
            self.schedule,
            self.hopeless,
            self.target,
            self.cost_of,
            self.lambdas,
            view.key,
        )
        path: dict[float, StepParams] | None = self.space.memo.get(key)
        lower = self.tables[0] if self.hopeless else None
        if path is None:
            path, init = {}, None
            for lam in sorted(self.lambdas, reverse=True):
                init = fit_step_thresholds(
                    view,
                    self.tables,
                    lower,
                    mode=self.mode,
                    lam=lam,
                    cost_of=self.cost_of,
                    target=self.target,
                    init=init,
                )
                path[lam] = init
            self.space.memo[key] = path
        return _StepFitted(StepRuleFitted(self.tables, lower, path[self.lam], self.mode, self.space.cap))


#: lambda grid of :class:`MultiStepFamily` (token fraction traded per disagreement): 3 .. 120
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(v) for v in np.geomspace(3.0, 120.0, 8))


def default_schedules(cap: int) -> list[tuple[int, ...]]:
    """Step schedules tried by :class:`MultiStepFamily`: dense early (1..8, then sparser) and doubling."""
    dense = tuple(s for s in (*range(1, 9), 10, 12, 16, 20, 24) if s < cap)
    doubling = tuple(s for s in (2, 3, 4, 6, 8, 12, 16, 24) if s < cap)
    return [s for s in dict.fromkeys((dense, doubling)) if s]


class MultiStepFamily(Family):
    """Per-step thresholds (optionally with a hopeless cut), fitted per ``lambda`` on a grid.

    First every signal alone; then pairs of the ``pair_top`` signals that did best alone (cheapest
    feasible), both "all" (both thresholds met) and "any" (either met). Thresholds alone are fitted to
    agree with the full-budget answer (``target="agreement"``); with a hopeless cut the target is
    ``"no_loss"`` (cutting a program whose full answer would be wrong anyway costs nothing).
    """

    name = "multi_step"

    def __init__(
        self,
        schedules: Sequence[tuple[int, ...]] | None = None,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        hopeless: Sequence[bool] = (False, True),
        pair_top: int = 2,
        target: Target | None = None,
    ) -> None:
        self.schedules, self.lambdas, self.hopeless = schedules, tuple(lambdas), tuple(hopeless)
        self.pair_top, self.target = pair_top, target

    def _recipes(self, space: SearchSpace, signals: list[Signal], mode: Mode) -> Iterator[Recipe]:
        for schedule in self.schedules or default_schedules(space.cap):
            schedule = tuple(s for s in schedule if 1 <= s < space.cap)
            if not schedule:
                continue
            for hopeless in self.hopeless:
                target: Target = self.target or ("no_loss" if hopeless else "agreement")
                for lam in self.lambdas:
                    yield _StepRecipe(
                        space, signals, mode, schedule, hopeless, lam, self.lambdas, target, space.cost_of
                    )

    def top_signals(self, space: SearchSpace) -> list[Signal]:
        """Signals ranked by their best single-signal multi-step candidate so far."""
        best: dict[str, tuple[bool, float, float]] = {}
        for cand in space.leaderboard:
            recipe = cand.recipe
            if isinstance(recipe, _StepRecipe) and len(recipe.signals) == 1:
                name = signal_key(recipe.signals[0])
                rank = (not cand.feasible, cand.objective if cand.feasible else -cand.score.accuracy, 0.0)
                best[name] = min(best.get(name, rank), rank)
        ranked = sorted(space.signals, key=lambda s: best.get(signal_key(s), (True, np.inf, 0.0)))
        return ranked[: self.pair_top]

    def recipes(self, space: SearchSpace) -> Iterator[Recipe]:
        for signal in space.signals:
            yield from self._recipes(space, [signal], "all")
        if self.pair_top > 1 and len(space.signals) > 1:
            for a, b in combinations(self.top_signals(space), 2):
                modes: tuple[Mode, ...] = ("all", "any")
                for mode in modes:
                    yield from self._recipes(space, [a, b], mode)


# -- curve fits --------------------------------------------------------------------------------------------


class _CurveFitted(Fitted):
    """A fitted curve policy, deciding from cached signal values (its ``plan``)."""

    def __init__(self, rule: CurveFitAllocation | DynamicCurveFit, signal: Signal) -> None:
        self._rule, self._signal = rule, signal

    def stops(self, view: View) -> tuple[IntArray, IntArray]:
        valid = view.valid
        fire, check, _ = self._rule.plan(view.values(self._signal), view.counts, valid)
        stop = first_stop(fire, valid)
        return stop, view.rounds(check, stop)

    def rule(self) -> StopRule:
        return self._rule


def fit_curve(
    view: View, signal: Signal, detect: int, *, dynamic: bool, max_pairs: int = 5000, seed: int = 0
) -> RemainingCurve:
    """Fit remaining work (until the majority settles) against the signal at ``detect`` (or, for the
    dynamic policy, at every count from ``detect`` on) over the rows of ``view``."""
    replay = view.replay
    valid = view.valid
    settle = settle_counts(replay.winner[view.rows], valid)
    values = view.values(signal)
    cols = np.arange(detect - 1, replay.cap - 1) if dynamic else np.array([detect - 1])
    rows, col = np.nonzero(valid[:, cols])
    col = cols[col]
    if len(rows) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(rows), max_pairs, replace=False)
        rows, col = rows[pick], col[pick]
    h = values[rows, col]
    y = np.maximum(settle[rows] - (col + 1), 0).astype(np.float64)
    return fit_remaining_curve(h, y, max_work=float(replay.cap))


class _CurveRecipe(Recipe):
    def __init__(self, space: SearchSpace, signal: Signal, detect: int, scale: float, dynamic: bool) -> None:
        self.space, self.signal, self.detect, self.scale, self.dynamic = space, signal, detect, scale, dynamic
        self.family = "dynamic_curve_fit" if dynamic else "curve_fit"

    @property
    def params(self) -> dict[str, Any]:
        return {"signal": self.signal.name, "detect": self.detect, "scale": self.scale}

    def fit(self, view: View) -> Fitted:
        key = ("curve", self.dynamic, view.key, signal_key(self.signal), self.detect)
        curve: RemainingCurve | None = self.space.memo.get(key)
        if curve is None:
            curve = self.space.memo[key] = fit_curve(view, self.signal, self.detect, dynamic=self.dynamic)
        cls = DynamicCurveFit if self.dynamic else CurveFitAllocation
        return _CurveFitted(cls(self.detect, curve, self.space.cap, self.signal, self.scale), self.signal)


class CurveFitFamily(Family):
    """The paper's curve fit: at ``detect``, allocate ``scale * f(signal)`` more observations."""

    name = "curve_fit"
    dynamic = False

    def __init__(
        self,
        detects: Sequence[int] = (2, 3, 4, 5, 6, 8),
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
    ) -> None:
        self.detects, self.scales = tuple(detects), tuple(scales)

    def recipes(self, space: SearchSpace) -> Iterator[Recipe]:
        for signal in space.signals:
            for detect in self.detects:
                if detect < space.cap:
                    for scale in self.scales:
                        yield _CurveRecipe(space, signal, detect, scale, self.dynamic)


class DynamicCurveFitFamily(CurveFitFamily):
    """Dynamic curve fitting: re-allocate at every checkpoint with the latest certaindex."""

    name = "dynamic_curve_fit"
    dynamic = True


def default_families() -> list[Family]:
    return [StaticFamily(), MultiStepFamily(), CurveFitFamily(), DynamicCurveFitFamily()]
