"""The online benchmark's statistics: deadline attainment and the figures of one run, the 90%
crossings of the attainment curves, and the replicates' means, intervals and mean curves
(``docs/online-benchmark.md``: *Sweeps*, *Figures*, *Replicates*)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._online_simulate import ProgramOutcome
from ._online_workload import ProgramSpec

__all__ = [
    "TARGET",
    "attainment",
    "combine_replicates",
    "crossing_down",
    "crossing_up",
    "interval95",
    "mean",
    "mean_points",
    "min_scale_at_90",
    "percentile",
    "ratio",
    "run_figures",
]

TARGET = 0.9  #: the attainment the headline figures keep


# -- figures --


def attainment(
    programs: Sequence[ProgramSpec], outcomes: Sequence[ProgramOutcome], slo_scale: float
) -> float:
    """Fraction of the run's programs that met their deadline at ``slo_scale``."""
    if not outcomes:
        return math.nan
    met = sum(o.met(programs[o.index].deadline(slo_scale)) for o in outcomes)
    return met / len(outcomes)


def crossing_down(xs: Sequence[float], ys: Sequence[float], target: float = TARGET) -> float:
    """The largest x keeping ``y >= target`` on a curve that falls with x: interpolated between the
    last point at or above the target and the next one below it (scanning up from the smallest x);
    the largest x when every point is at or above it, 0 when the first is below it."""
    if not xs:
        return math.nan
    if ys[0] < target:
        return 0.0
    for k in range(1, len(xs)):
        if ys[k] < target:
            x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return float(xs[-1])


def crossing_up(xs: Sequence[float], ys: Sequence[float], target: float = TARGET) -> float:
    """The smallest x keeping ``y >= target`` on a curve that rises with x: interpolated between the
    point below the target and the next one (scanning down from the largest x); the smallest x when
    every point is at or above it, inf when the largest is below it."""
    if not xs:
        return math.nan
    if ys[-1] < target:
        return math.inf
    for k in range(len(xs) - 2, -1, -1):
        if ys[k] < target:
            x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return float(xs[0])


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_figures(
    programs: Sequence[ProgramSpec], outcomes: Sequence[ProgramOutcome], slo_scale: float
) -> dict[str, Any]:
    """Attainment, latency, accuracy and tokens of one run."""
    from ..calibration import default_cluster, equivalence_from_cluster

    equivalent = equivalence_from_cluster(default_cluster())
    ran = [o for o in outcomes if o.stop_reason != "rejected"]
    latencies = [o.latency_s for o in ran]
    correct = sum(
        o.answer is not None and equivalent(o.answer, programs[o.index].question.gold) for o in outcomes
    )
    count = max(len(outcomes), 1)
    return {
        "programs": len(outcomes),
        "attainment": attainment(programs, outcomes, slo_scale),
        "accuracy": correct / count,
        "latency_mean_s": sum(latencies) / len(latencies) if latencies else math.nan,
        "latency_p90_s": percentile(latencies, 0.9),
        "tokens": sum(o.tokens for o in outcomes) / count,
        "samples": sum(o.samples for o in outcomes) / count,
        "rejected": sum(o.stop_reason == "rejected" for o in outcomes) / count,
        "cut": sum(o.stop_reason == "deadline" for o in outcomes) / count,
    }


def min_scale_at_90(slo_curve: Sequence[Mapping[str, Any]]) -> float:
    """The tightest SLO scale of an SLO curve that keeps 90% attainment (:func:`crossing_up`)."""
    return crossing_up([p["slo_scale"] for p in slo_curve], [p["attainment"] for p in slo_curve])


def ratio(value: float, base: float) -> float:
    if not (math.isfinite(value) and math.isfinite(base)) or base <= 0:
        return math.nan
    return value / base


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def interval95(values: Sequence[float]) -> tuple[float, float]:
    """Student-t 95% interval of the mean of ``values`` (replicates); NaNs when any is not finite
    or there are fewer than two."""
    from scipy import stats

    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    if len(set(values)) == 1:
        return values[0], values[0]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean(values), scale=stats.sem(values))
    return float(low), float(high)


def mean_points(curves: Sequence[Sequence[Mapping[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Pointwise means of the replicates' curves, at the ``key`` values every replicate ran."""
    common = set.intersection(*({p[key] for p in curve} for curve in curves))
    out = []
    for x in sorted(common):
        points = [next(p for p in curve if p[key] == x) for curve in curves]
        out.append({k: mean([p[k] for p in points]) for k in points[0]})
    return out


def combine_replicates(replicates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The replicates' figures as one: means, 95% intervals of the headline figures, mean curves."""
    if len(replicates) == 1:
        return {**replicates[0], "replicates": 1}
    scalar = (
        "max_rate_at_90", "min_slo_scale_at_90", "alone_min_slo_scale_at_90", "programs", "attainment",
        "accuracy", "latency_mean_s", "latency_p90_s", "tokens", "gpu_tokens", "samples", "rejected", "cut",
    )  # fmt: skip
    policies: dict[str, Any] = {}
    intervals: dict[str, Any] = {}
    for name, first in replicates[0]["policies"].items():
        each = [r["policies"][name] for r in replicates]
        policies[name] = {
            "description": first["description"],
            **{key: mean([f[key] for f in each]) for key in scalar},
            "curve": mean_points([f["curve"] for f in each], "rate"),
            "slo_curve": mean_points([f["slo_curve"] for f in each], "slo_scale"),
            "alone_slo_curve": mean_points([f["alone_slo_curve"] for f in each], "slo_scale"),
        }
        ratios = [r["ratios"][name] for r in replicates]
        intervals[name] = {
            **{key: interval95([f[key] for f in each]) for key in (*scalar[:3], "accuracy")},
            "rate_ratio": interval95([x["rate"] for x in ratios]),
            "slo_scale_ratio": interval95([x["slo_scale"] for x in ratios]),
        }
    return {
        "seeds": replicates[0]["seeds"],
        "replicates": len(replicates),
        # Ratios pair each replicate with its own naive run (same programs and draws), then average.
        "ratios": {
            name: {key: mean([r["ratios"][name][key] for r in replicates]) for key in ("rate", "slo_scale")}
            for name in policies
        },
        "intervals": intervals,
        "programs": mean([r["programs"] for r in replicates]),
        "policies": policies,
        "base_latency_s": {
            key: mean([r["base_latency_s"][key] for r in replicates]) for key in ("mean", "p10", "p90")
        },
        "difficulty": {key: mean([r["difficulty"][key] for r in replicates]) for key in ("mean", "max")},
        "slo_floor": {
            "min_slo_scale_at_90": mean([r["slo_floor"]["min_slo_scale_at_90"] for r in replicates]),
            "slo_curve": mean_points([r["slo_floor"]["slo_curve"] for r in replicates], "slo_scale"),
        },
        "by_seed": [
            {key: r[key] for key in ("seeds", "programs", "policies", "ratios", "slo_floor")}
            for r in replicates
        ],
    }
