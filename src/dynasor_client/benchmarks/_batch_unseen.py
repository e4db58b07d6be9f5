"""The batch benchmark's *unseen* figures: what a freshly calibrated rule loses on questions its
calibration never saw (``docs/batch-benchmark.md``: *Unseen questions*).

- ``train->test``: calibrate on the reference split, judge on the evaluated split.
- ``k-fold``: split every question of the file into k folds (by a salted hash of the id, independent
  of the calibration's own inner folds), calibrate on k-1, judge on the one left out, and pool the k
  held-out folds: every question is judged once, by a rule that never saw it.
- ``cross``: calibrate on all of one file, judge on all of another. Files recorded with different
  sample counts are compared at the common cap (the fewer samples): the rule is fitted on the first
  ``cap`` samples of each question and the full budget is the majority of ``cap`` samples on both.

Each figure is the paired loss against the full budget (per question, averaged over sample orders)
with a bootstrap interval over the judged questions, and the tokens saved with its own interval.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..calibration import CalibrationResult, LabelledTraces
    from ..certainty import FloatArray, StopRule
    from ..traces import TraceQuestion

__all__ = ["UnseenSettings", "cross_unseen", "kfold_unseen", "outer_fold", "split_unseen"]


@dataclass(frozen=True)
class UnseenSettings:
    """How each rule is calibrated (``calibrate``'s arguments) and how figures are resampled."""

    epsilon: float = 0.002
    confidence: float | None = 0.95
    safety: float = 1.0
    folds: int = 5
    orders: int = 20
    seed: int = 0
    boots: int = 1000


def outer_fold(question_id: str, folds: int) -> int:
    """A stable fold in ``range(folds)``, salted apart from the calibration's inner folds."""
    digest = hashlib.sha256(("unseen:" + question_id).encode("utf-8")).digest()
    return min(int(int.from_bytes(digest[:8], "big") / 2**64 * folds), folds - 1)


def _fit(labelled: LabelledTraces, cap: int, settings: UnseenSettings) -> CalibrationResult:
    from ..calibration import Replay, calibrate

    replay = Replay(labelled, orders=settings.orders, cap=cap, seed=settings.seed)
    return calibrate(
        replay,
        epsilon=settings.epsilon,
        folds=settings.folds,
        safety=settings.safety,
        confidence=settings.confidence,
        boots=settings.boots,
    )


@dataclass
class _Judged:
    """Per judged question: loss against the full budget, tokens spent, full-budget tokens."""

    loss: FloatArray
    tokens: FloatArray
    full: FloatArray
    baseline: float
    accuracy: float


def _judge(rule: StopRule, labelled: LabelledTraces, cap: int, settings: UnseenSettings) -> _Judged:
    from ..calibration import Replay
    from ..certainty import Cap

    replay = Replay(labelled, orders=settings.orders, cap=cap, seed=settings.seed)
    stop = replay.stops(Cap(replay.cap) | rule)
    rows = np.arange(replay.rows)
    per_q = (-1, replay.orders)
    return _Judged(
        loss=replay.paired_loss(stop),
        tokens=replay.spent[rows, stop].reshape(per_q).mean(axis=1).astype(np.float64),
        full=replay.spent[rows, replay.last].reshape(per_q).mean(axis=1).astype(np.float64),
        baseline=float(replay.correct[rows, replay.last].mean()),
        accuracy=float(replay.correct[rows, stop].mean()),
    )


def _figures(parts: Sequence[_Judged], settings: UnseenSettings, level: float = 0.95) -> dict[str, Any]:
    """Pooled over the judged questions of ``parts``: loss and tokens saved, each with a bootstrap
    interval over questions (the same resamples for both)."""
    from ..calibration import QuestionBootstrap

    loss = np.concatenate([p.loss for p in parts])
    tokens = np.concatenate([p.tokens for p in parts])
    full = np.concatenate([p.full for p in parts])
    boot = QuestionBootstrap(len(loss), boots=settings.boots, seed=settings.seed)
    estimate = boot.estimate(loss, level)
    saved = 1.0 - boot.means(tokens) / boot.means(full)
    questions = [len(p.loss) for p in parts]
    return {
        "questions": int(sum(questions)),
        "baseline_accuracy": float(np.average([p.baseline for p in parts], weights=questions)),
        "accuracy": float(np.average([p.accuracy for p in parts], weights=questions)),
        "loss": estimate.loss,
        "loss_ci95": list(estimate.ci95),
        "loss_upper95": estimate.upper,
        "saved": 1.0 - float(tokens.mean()) / float(full.mean()),
        "saved_ci95": [float(np.quantile(saved, 0.025)), float(np.quantile(saved, 0.975))],
        "tokens": float(tokens.mean()),
        "full_tokens": float(full.mean()),
    }


def split_unseen(
    fit: Sequence[TraceQuestion],
    judged: Sequence[TraceQuestion],
    *,
    cap: int,
    settings: UnseenSettings,
    source: str = "",
) -> dict[str, Any]:
    """Calibrate on ``fit``, judge on ``judged`` (disjoint questions of one file)."""
    from ..calibration import label_traces

    overlap = {q.id for q in fit} & {q.id for q in judged}
    if overlap:
        raise ValueError(f"split_unseen: {len(overlap)} questions are both fitted and judged")
    result = _fit(label_traces(fit, source=source), cap, settings)
    part = _judge(result.rule, label_traces(judged, source=source), cap, settings)
    return {"fitted": len(fit), **_figures([part], settings), "rule": result.rule.to_dict()}


def kfold_unseen(
    questions: Sequence[TraceQuestion],
    *,
    k: int,
    cap: int,
    settings: UnseenSettings,
    source: str = "",
) -> dict[str, Any]:
    """k-fold over the questions of one file: every question judged by a rule fitted without it."""
    from ..calibration import label_traces

    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    fold = np.array([outer_fold(q.id, k) for q in questions])
    parts, per_fold = [], []
    for f in range(k):
        held = [q for q, g in zip(questions, fold, strict=True) if g == f]
        rest = [q for q, g in zip(questions, fold, strict=True) if g != f]
        if not held or not rest:
            continue
        result = _fit(label_traces(rest, source=source), cap, settings)
        part = _judge(result.rule, label_traces(held, source=source), cap, settings)
        parts.append(part)
        per_fold.append(
            {
                "fold": f,
                "questions": len(held),
                "loss": float(part.loss.mean()),
                "saved": 1.0 - float(part.tokens.mean()) / float(part.full.mean()),
            }
        )
    if not parts:
        raise ValueError(f"k-fold: {len(questions)} questions cannot fill {k} folds")
    return {"k": k, **_figures(parts, settings), "folds": per_fold}


def cross_unseen(
    fit: Sequence[TraceQuestion],
    judged: Sequence[TraceQuestion],
    *,
    cap: int,
    settings: UnseenSettings,
    fit_source: str,
    judged_source: str,
) -> dict[str, Any]:
    """Calibrate on every question of one file, judge on every question of another, at the common
    cap (the fewest samples recorded per question of either, at most ``cap``)."""
    from ..calibration import label_traces

    fit_l, judged_l = label_traces(fit, source=fit_source), label_traces(judged, source=judged_source)
    common = min(cap, fit_l.max_samples, judged_l.max_samples)
    result = _fit(fit_l, common, settings)
    part = _judge(result.rule, judged_l, common, settings)
    return {
        "fitted_on": fit_source,
        "judged_on": judged_source,
        "fitted": fit_l.questions,
        "cap": common,
        **_figures([part], settings),
        "rule": result.rule.to_dict(),
    }
