"""The profiler: choose the stop rule that minimises cost subject to accuracy within epsilon.

:func:`calibrate` replays labelled traces in many random sample orders (:class:`Replay`), takes the
full-budget accuracy (majority of all ``cap`` samples, same orders) as the baseline, and searches
*recipes* — a family's way to turn training data into a rule (see :mod:`._families`) — for the one
with the lowest objective (mean tokens by default) whose accuracy is at least ``baseline - epsilon``
(and whose mean rounds are at most ``max_rounds``, when given).

**Generalisation.** Recipes that fit parameters to data (per-step thresholds, curves) are judged by
k-fold cross-validation over questions (``folds=5``; folds by a salted hash of the question id): each
fold's questions are scored with the recipe fitted on the other folds, and these out-of-fold figures
decide feasibility and rank. The chosen recipe is then refitted on all the data. A rule is chosen
for how it does on questions it was not fitted on, not for how well it memorised them. Thresholds are
also fitted to agree with the full-budget answer rather than to chase lucky early answers.

**Safety margin.** Picking the cheapest of many candidates that clear a noisy bound favours the
lucky ones (the winner's curse). A candidate is feasible only when its out-of-fold accuracy minus
``safety`` standard errors of its paired accuracy difference with the full budget (per question,
averaged over orders) is at least ``baseline - epsilon``. ``safety=1`` (:func:`search`'s default;
:func:`calibrate` uses the bootstrap bound below) kept the held-out drop on SVAMP at 0.05 points on
average over 10 random 70/30 splits (0.17 points at ``safety=0``) while saving about 75% of tokens
(79% at 0); judged 5-fold over all 600 questions it lost 0.19 points (0.20 at ``safety=0``).

**Bootstrap upper bound** (``confidence=``, what ``calibrate`` and the CLI use by default): instead
of the normal margin, a candidate is feasible only when the ``confidence`` quantile of its
out-of-fold loss, resampled over questions (:class:`~dynasor_client.calibration.QuestionBootstrap`,
the same resamples for every candidate), is within ``epsilon``. The loss is skewed (most questions
lose nothing, a few lose a lot), which the bootstrap follows and the normal margin does not; and
the level says what the bound means: at 0.95 the 5-fold loss on SVAMP fell to 0.03 points (74.9%
of tokens saved). ``confidence=None`` keeps the ``safety`` margin. The figures
behind the default level are in ``docs/calibration.md``.

**Signals** are candidates, not code paths: every signal in ``signals=`` (default: entropy plus every
signal registered with :func:`~dynasor_client.certainty.register_signal` that builds without
arguments and varies on these traces) is tried by every family. Each signal's values are computed
once (``[B, K]``) and shared by all recipes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..certainty import (
    BoolArray,
    Cap,
    EntropyCertainty,
    FloatArray,
    IntArray,
    Signal,
    StaticThreshold,
    StopRule,
    registered_signals,
)
from ..certainty.signals import register_builtin_signals, signal_to_dict
from ._families import Family, Recipe, default_families, signal_key
from ._replay import Evaluation, LabelledTraces, Replay, Score, label_traces
from ._result import CalibrationResult
from ._robust import LossEstimate, QuestionBootstrap
from ._steps import StepTable
from ._traces import TraceQuestion, fold_of

log = logging.getLogger("dynasor_client.calibration")

#: What the search minimises: a name, or a function of a :class:`Score` (accuracy, tokens, samples,
#: rounds, saved) — e.g. ``lambda s: s.tokens + 200 * s.rounds``.
Objective = Literal["tokens", "samples", "rounds"] | Callable[[Score], float]
#: the bootstrap upper bound's level that :func:`calibrate` uses by default (docs/calibration.md)
DEFAULT_CONFIDENCE = 0.95


class SearchSpace:
    """The replay, the candidate signals and their values computed once, and what scored so far."""

    def __init__(
        self,
        replay: Replay,
        signals: Sequence[Signal],
        *,
        max_rounds: float | None = None,
        cost_of: Literal["tokens", "samples"] = "tokens",
    ) -> None:
        self.replay, self.signals, self.max_rounds = replay, list(signals), max_rounds
        #: what fitted thresholds trade against agreement (the objective, when it is one of these)
        self.cost_of = cost_of
        self.cap = replay.cap
        self.leaderboard: list[Candidate] = []
        self.memo: dict[Any, Any] = {}
        self._values: dict[str, FloatArray] = {}
        self._tables: dict[tuple[str, tuple[int, ...]], StepTable] = {}

    def seed_values(self, known: dict[str, FloatArray]) -> None:
        """Values already computed on this replay (by :func:`signal_key`)."""
        self._values.update(known)

    def values(self, signal: Signal) -> FloatArray:
        key = signal_key(signal)
        if key not in self._values:
            self._values[key] = np.asarray(signal.batch(self.replay.obs), dtype=np.float64)
        return self._values[key]

    def table(self, signal: Signal, steps: Sequence[int]) -> StepTable:
        key = (signal_key(signal), tuple(steps))
        if key not in self._tables:
            self._tables[key] = StepTable.build(
                self.values(signal), self.replay.obs.valid, signal, tuple(steps)
            )
        return self._tables[key]


@dataclass(eq=False)
class View:
    """The rows of some whole questions (all of them, or one side of a cross-validation split)."""

    space: SearchSpace
    rows: IntArray
    key: str

    @property
    def replay(self) -> Replay:
        return self.space.replay

    def values(self, signal: Signal) -> FloatArray:
        return self.space.values(signal)[self.rows]

    @property
    def valid(self) -> BoolArray:
        return self.replay.obs.valid[self.rows]

    @property
    def counts(self) -> IntArray:
        return self.replay.counts[self.rows]

    @property
    def last(self) -> IntArray:
        return self.replay.last[self.rows]

    def rounds(self, check: BoolArray, stop: IntArray) -> IntArray:
        return self.replay.rounds_at(check, stop)


@dataclass
class Candidate:
    """One recipe's cross-validated (out-of-fold) score."""

    recipe: Recipe
    score: Score
    objective: float
    feasible: bool
    #: the bootstrap upper bound of its out-of-fold loss (when the search uses one)
    loss_upper: float | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.score
        return {
            "family": self.recipe.family,
            "recipe": self.recipe.params,
            "accuracy": s.accuracy,
            "tokens": s.tokens,
            "saved": s.saved,
            "rounds": s.rounds,
            "objective": self.objective,
            "feasible": self.feasible,
            "loss_upper": self.loss_upper,
        }


def candidate_signals(replay: Replay, values: dict[str, FloatArray] | None = None) -> list[Signal]:
    """Entropy plus every registered signal that builds without arguments and varies on ``replay``
    (their values on ``replay`` are kept in ``values``, by :func:`signal_key`, when given)."""
    register_builtin_signals()
    registry = registered_signals()
    out: list[Signal] = [EntropyCertainty()]
    for name, factory in registry.items():
        if name == EntropyCertainty.name:
            continue
        try:
            signal = factory()
            values_of = np.asarray(signal.batch(replay.obs), dtype=np.float64)
        except Exception as exc:  # a signal that cannot run on these traces is simply not a candidate
            log.info("signal %s skipped: %s", name, exc)
            continue
        finite = values_of[np.isfinite(values_of) & replay.obs.valid]
        if finite.size and float(np.ptp(finite)) > 0:
            out.append(signal)
            if values is not None:
                values[signal_key(signal)] = values_of
    return out


def _objective_fn(objective: Objective) -> Callable[[Score], float]:
    if callable(objective):
        return objective
    if objective not in ("tokens", "samples", "rounds"):
        raise ValueError(f"objective must be 'tokens', 'samples', 'rounds' or a callable, got {objective!r}")
    name: str = objective
    return lambda score: float(getattr(score, name))


@dataclass
class SearchOutcome:
    """What :func:`search` found: the chosen rule (refitted on all rows) and how candidates did."""

    rule: StopRule
    recipe: Recipe | None
    expected: Evaluation
    cross_validated: Evaluation
    baseline: Evaluation
    best_per_family: dict[str, Candidate]
    family_evaluations: dict[str, Evaluation]
    leaderboard: list[Candidate]
    seconds: float
    notes: list[str] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    #: the chosen recipe's out-of-fold loss against the full budget, bootstrapped over questions
    loss: LossEstimate | None = None


def search(
    replay: Replay,
    *,
    epsilon: float = 0.002,
    objective: Objective = "tokens",
    max_rounds: float | None = None,
    families: Sequence[Family] | None = None,
    signals: Sequence[Signal] | None = None,
    folds: int = 5,
    safety: float = 1.0,
    confidence: float | None = None,
    boots: int = 1000,
) -> SearchOutcome:
    """Search ``families`` on ``replay`` (see the module docs); the engine behind :func:`calibrate`.

    ``confidence`` (e.g. 0.9): judge feasibility by the bootstrap upper bound of the out-of-fold loss
    at that level (``boots`` resamples of the questions) instead of ``safety`` standard errors.
    """
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    start = time.perf_counter()
    bootstrap = QuestionBootstrap(replay.data.questions, boots=boots, seed=replay.seed)
    report_level = 0.95 if confidence is None else confidence
    score_of = _objective_fn(objective)
    baseline = replay.baseline()
    min_accuracy = baseline.accuracy - epsilon
    known: dict[str, FloatArray] = {}
    chosen_signals = list(signals) if signals is not None else candidate_signals(replay, known)
    cost_of: Literal["tokens", "samples"] = "samples" if objective == "samples" else "tokens"
    space = SearchSpace(replay, chosen_signals, max_rounds=max_rounds, cost_of=cost_of)
    space.seed_values(known)
    everything = View(space, np.arange(replay.rows), "all")
    splits: list[tuple[View, View]] = []
    if folds > 1:
        q_fold = np.array([fold_of(qid, folds) for qid in replay.data.ids], dtype=np.int64)
        row_fold = q_fold[replay.question]
        for f in range(folds):
            out_rows = np.flatnonzero(row_fold == f)
            if 0 < len(out_rows) < replay.rows:
                fit_rows = np.flatnonzero(row_fold != f)
                splits.append((View(space, fit_rows, f"cv{f}/{folds}"), View(space, out_rows, "-")))

    def feasible(score: Score, margin: float = safety, upper: float | None = None) -> bool:
        if upper is not None:  # the bootstrap bound replaces the normal margin
            ok = upper <= epsilon + 1e-12
        else:
            ok = score.accuracy - margin * score.difference_se >= min_accuracy - 1e-12
        return ok and (max_rounds is None or score.rounds <= max_rounds + 1e-12)

    def better(a: Candidate, b: Candidate | None) -> bool:
        if b is None or a.feasible != b.feasible:
            return b is None or a.feasible
        if not a.feasible:
            return a.score.accuracy > b.score.accuracy
        return (a.objective, -a.score.accuracy, a.score.rounds) < (
            b.objective - 1e-9,
            -b.score.accuracy,
            b.score.rounds,
        )

    best: tuple[Candidate, IntArray, IntArray] | None = None
    per_family: dict[str, tuple[Candidate, IntArray, IntArray]] = {}
    for family in families if families is not None else default_families():
        for recipe in family.recipes(space):
            if recipe.needs_fit and splits:
                stop = np.empty(replay.rows, dtype=np.int64)
                rounds = np.empty(replay.rows, dtype=np.int64)
                for train, held in splits:
                    stop[held.rows], rounds[held.rows] = recipe.fit(train).stops(held)
            else:
                stop, rounds = recipe.fit(everything).stops(everything)
            score = replay.score(stop, rounds)
            upper = None if confidence is None else bootstrap.upper(replay.paired_loss(stop), confidence)
            cand = Candidate(recipe, score, score_of(score), feasible(score, upper=upper), upper)
            space.leaderboard.append(cand)
            current = per_family.get(recipe.family)
            if better(cand, None if current is None else current[0]):
                per_family[recipe.family] = (cand, stop, rounds)
            if better(cand, None if best is None else best[0]):
                best = (cand, stop, rounds)
    family_evaluations = {name: replay.summarise(s, r) for name, (_, s, r) in per_family.items()}
    notes: list[str] = []
    if best is None or not best[0].feasible:
        notes.append("no candidate met the constraints; the full budget is used")
        rule: StopRule = Cap(replay.cap)
        expected = replay.evaluate(rule)
        none_lost = bootstrap.estimate(np.zeros(replay.data.questions), report_level)
        return SearchOutcome(
            rule,
            None,
            expected,
            expected,
            baseline,
            {k: v[0] for k, v in per_family.items()},
            family_evaluations,
            space.leaderboard,
            time.perf_counter() - start,
            notes,
            chosen_signals,
            none_lost,
        )
    cand, oof_stop, oof_rounds = best
    fitted = cand.recipe.fit(everything)
    rule = fitted.rule()
    expected = replay.evaluate(rule)
    fast_stop, fast_rounds = fitted.stops(everything)
    if not np.array_equal(fast_stop, replay.stops(rule)):  # the engine's fast path must be exact
        notes.append("fast-path stops differ from the rule's own (figures reported are the rule's)")
        log.warning("calibration: fast-path stops differ from rule.batch for %s", cand.recipe.describe())
    refit = replay.score(fast_stop, fast_rounds)
    if not feasible(refit, 0.0):
        notes.append(
            f"refitted on all questions the rule scores {refit.accuracy:.5f} (rounds {refit.rounds:.2f})"
            f" on them, outside the constraints (accuracy >= {min_accuracy:.5f}); it was chosen out of fold"
        )
    return SearchOutcome(
        rule,
        cand.recipe,
        expected,
        replay.summarise(oof_stop, oof_rounds),
        baseline,
        {k: v[0] for k, v in per_family.items()},
        family_evaluations,
        space.leaderboard,
        time.perf_counter() - start,
        notes,
        chosen_signals,
        bootstrap.estimate(replay.paired_loss(oof_stop), report_level),
    )


def paper_rule(cap: int) -> StopRule:
    """The paper's published self-consistency setting: detect at 5 samples, stop if H~ >= 0.7."""
    return StaticThreshold(min(5, cap), 0.7, cap)


def published_rules(cap: int) -> dict[str, StopRule]:
    """Published rules to compare against, each with its paper's default setting: the Dynasor paper's
    static threshold, Adaptive-Consistency (P(leader is the majority) >= 0.95, checked after every
    sample) and ESC (windows of 5 that all agree), the last two when their signals are available."""
    rules: dict[str, StopRule] = {"paper_static": paper_rule(cap)}
    try:
        from ..certainty import adaptive_consistency, esc
    except ImportError:
        return rules
    rules["adaptive_consistency"] = adaptive_consistency(0.95) | Cap(cap)
    rules["esc"] = esc(min(5, cap)) | Cap(cap)
    return rules


def evaluate_published(replay: Replay) -> dict[str, dict[str, Any]]:
    """:func:`published_rules` evaluated on ``replay``: ``{name: {"rule": ..., **figures}}``."""
    return {
        name: {"rule": rule.to_dict(), **replay.evaluate(rule).to_dict()}
        for name, rule in published_rules(replay.cap).items()
    }


def calibrate(
    data: Sequence[TraceQuestion] | LabelledTraces | Replay,
    *,
    cap: int = 30,
    epsilon: float = 0.002,
    orders: int = 20,
    seed: int = 0,
    objective: Objective = "tokens",
    max_rounds: float | None = None,
    families: Sequence[Family] | None = None,
    signals: Sequence[Signal] | None = None,
    folds: int = 5,
    safety: float = 1.0,
    confidence: float | None = DEFAULT_CONFIDENCE,
    boots: int = 1000,
    fitted_on: dict[str, Any] | None = None,
) -> CalibrationResult:
    """Choose the rule minimising ``objective`` with accuracy >= full-budget accuracy - ``epsilon``.

    ``data``: trace questions (labelled with the default labeller), :class:`LabelledTraces`, or a
    :class:`Replay` (then ``orders``, ``cap`` and ``seed`` are its own). ``epsilon`` is a fraction
    (0.002 = 0.2 accuracy points). ``safety``: how many standard errors (over questions) of the
    paired accuracy difference with the full budget the out-of-fold accuracy must clear the bound by,
    used when ``confidence`` is None; ``confidence``: the level of the bootstrap upper bound on the
    out-of-fold loss that must be within ``epsilon`` (``boots`` resamples of the questions; see the
    module docs). ``fitted_on`` adds provenance (file name, split) to the result.
    Returns a :class:`~dynasor_client.calibration.CalibrationResult`.
    """
    if not 0 <= epsilon < 1:
        raise ValueError("epsilon is an accuracy fraction in [0, 1), e.g. 0.002 for 0.2 points")
    if isinstance(data, Replay):
        replay = data
    else:
        labelled = data if isinstance(data, LabelledTraces) else label_traces(data)
        replay = Replay(labelled, orders=orders, cap=cap, seed=seed)
    outcome = search(
        replay,
        epsilon=epsilon,
        objective=objective,
        max_rounds=max_rounds,
        families=families,
        signals=signals,
        folds=folds,
        safety=safety,
        confidence=confidence,
        boots=boots,
    )
    info: dict[str, Any] = {
        "traces": replay.data.source,
        "questions": replay.data.questions,
        "cap": replay.cap,
        "orders": replay.orders,
        "seed": replay.seed,
        "epsilon": epsilon,
        "objective": objective if isinstance(objective, str) else getattr(objective, "__name__", "custom"),
        "max_rounds": max_rounds,
        "folds": folds,
        "safety": safety,
        "confidence": confidence,
        "boots": boots,
        **(fitted_on or {}),
        "question_ids": list(replay.data.ids),
    }
    families_report = {
        name: {**cand.to_dict(), "accuracy_ci95": list(outcome.family_evaluations[name].accuracy_ci95)}
        for name, cand in outcome.best_per_family.items()
    }
    return CalibrationResult(
        rule=outcome.rule,
        expected=outcome.expected,
        baseline=outcome.baseline,
        cross_validated=outcome.cross_validated,
        expected_loss=outcome.loss,
        recipe=None if outcome.recipe is None else {"family": outcome.recipe.family, **outcome.recipe.params},
        fitted_on=info,
        families=families_report,
        reference=evaluate_published(replay),
        search={
            "candidates": len(outcome.leaderboard),
            "signals": [signal_to_dict(s) for s in outcome.signals],
            "seconds": round(outcome.seconds, 3),
            "notes": outcome.notes,
        },
    )
