"""The online benchmark's output: its figures as a readable table and its attainment curves as a plot
(``docs/online-benchmark.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import format_table, pyplot, save_figure
from ._online_stats import TARGET

__all__ = ["online_table", "plot_online"]


def _num(value: Any, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def _pct(value: Any) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{100 * value:.1f}%"
    )


def _with_interval(value: Any, interval: Sequence[Any] | None, suffix: str = "") -> str:
    """``value`` and, from replicates, the half-width of its 95% interval (``1.23x ±0.10``)."""
    text = _num(value) + suffix
    if interval is None:
        return text
    low, high = interval
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{text} ±?"
    return f"{text} ±{(high - low) / 2:.2f}"


def _scale_points(slo_curve: Sequence[Mapping[str, Any]]) -> str:
    return " ".join(f"x{p['slo_scale']:g}:{100 * p['attainment']:.0f}%" for p in slo_curve)


def online_table(result: Mapping[str, Any]) -> str:
    """The figures as a readable table (and the attainment curves, compactly)."""
    ratios = result["ratios"]
    intervals = result.get("intervals") or {}
    rows = []
    for name, f in result["policies"].items():
        ci = intervals.get(name, {})
        rows.append(
            [
                name,
                _with_interval(f["max_rate_at_90"], ci.get("max_rate_at_90")),
                _with_interval(ratios[name]["rate"], ci.get("rate_ratio"), "x"),
                _with_interval(f["min_slo_scale_at_90"], ci.get("min_slo_scale_at_90")),
                _with_interval(ratios[name]["slo_scale"], ci.get("slo_scale_ratio"), "x"),
                _with_interval(f["alone_min_slo_scale_at_90"], ci.get("alone_min_slo_scale_at_90")),
                _pct(f["attainment"]),
                _pct(f["accuracy"]),
                _num(f["latency_mean_s"]),
                _num(f["latency_p90_s"]),
                _num(f["tokens"], ".0f"),
                _num(f["gpu_tokens"], ".0f"),
                _pct(f["cut"] + f["rejected"]),
            ]
        )
    head = (
        f"bench online: self-consistency (n={result['n']}, rule {result['rule']!r}) on {result['traces']} "
        f"({result['split']}), profile {result['profile']}, window {result['window']} sequences; "
        f"arrivals for {result['duration_s']:g} s per run; capacity (naive, full batch) "
        f"{result['capacity_rate']:.2f} programs/s"
    )
    table = format_table(
        [
            "policy", "rate@90%", "vs naive", "SLO@90%", "vs naive", "alone", "attain", "accuracy",
            "lat mean", "lat p90", "tokens", "GPU tok", "cut/rej",
        ],
        rows,
    )  # fmt: skip
    reference = (
        f"attainment, accuracy, latency (modelled s), tokens and cut/rejected at the reference point: "
        f"{result['ref_rate']:.2f} programs/s, SLO scale {result['slo_scale']:g}; rate@90% at SLO scale "
        f"{result['slo_scale']:g}; SLO@90% at {result['ref_rate']:.2f} programs/s; alone: SLO@90% with "
        "each of those programs run alone on the idle GPU (the bound of that policy's programs)"
    )
    replicates = result.get("replicates", 1)
    if replicates > 1:
        first = result["seeds"]["arrivals"]
        reference += (
            f"\nmeans of {replicates} replicates (arrival and replay seeds {first}.."
            f"{first + replicates - 1}), ± the half-width of the 95% interval (Student t); ratios pair "
            "each replicate with its own naive run; curves are pointwise means"
        )
    curves = []
    for name, f in result["policies"].items():
        points = " ".join(f"{p['rate']:.1f}:{100 * p['attainment']:.0f}%" for p in f["curve"])
        curves.append(f"  {name:<12} rate  {points}")
    for name, f in result["policies"].items():
        curves.append(f"  {name:<12} SLO   {_scale_points(f['slo_curve'])}")
    for name, f in result["policies"].items():
        curves.append(f"  {name:<12} alone {_scale_points(f['alone_slo_curve'])}")
    floor = result["slo_floor"]
    curves.append(f"  {'floor':<12} alone {_scale_points(floor['slo_curve'])}")
    reference += (
        f"\nfloor: SLO scale {_num(floor['min_slo_scale_at_90'])} at 90% with each program's shortest "
        "recorded sample generated alone: no policy that answers from a sample can go below it"
    )
    lines = [head, table, reference, "attainment curves:", *curves]
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"({result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def plot_online(result: Mapping[str, Any], path: str | Path) -> None:
    """Attainment against the arrival rate and against the SLO scale, one line per policy (PNG)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    try:
        markers = "osD^v<>pP*Xh"
        for i, (name, f) in enumerate(result["policies"].items()):
            style = {"marker": markers[i % len(markers)], "markersize": 4, "linewidth": 1.4, "label": name}
            left.plot([p["rate"] for p in f["curve"]], [p["attainment"] for p in f["curve"]], **style)
            right.plot(
                [p["slo_scale"] for p in f["slo_curve"]], [p["attainment"] for p in f["slo_curve"]], **style
            )
            if name in ("naive", "ours"):  # the bounds of the two headline policies, dashed
                alone = f["alone_slo_curve"]
                style = {**style, "linestyle": "--", "linewidth": 1.0, "label": f"{name}, each alone"}
                right.plot([p["slo_scale"] for p in alone], [p["attainment"] for p in alone], **style)
        floor = result["slo_floor"]["slo_curve"]
        right.plot(
            [p["slo_scale"] for p in floor], [p["attainment"] for p in floor],
            color="0.3", linestyle=":", linewidth=1.2, label="floor: shortest sample, alone",
        )  # fmt: skip
        for ax in (left, right):
            ax.axhline(TARGET, color="0.5", linestyle=":", linewidth=1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("deadline attainment")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        left.set_xlabel(f"arrival rate (programs/s), SLO scale {result['slo_scale']:g}")
        right.set_xlabel(f"SLO scale, {result['ref_rate']:.2f} programs/s")
        right.set_xscale("log")
        fig.suptitle(
            f"{result['traces']} on {result['profile']} (window {result['window']}, rule {result['rule']})",
            fontsize=10,
        )
        save_figure(fig, path)
    finally:
        plt.close(fig)
