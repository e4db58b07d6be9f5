"""The batch benchmark's output: its figures as a readable table and a token-to-accuracy plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._common import format_table, plot_token_accuracy

__all__ = ["batch_table", "plot_batch"]


def _pct(value: Any, digits: int = 1) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.{digits}f}%"


def _pt(value: float) -> str:
    return f"{100 * value:+.2f}"


def _unseen_rows(unseen: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    named: list[tuple[str, Mapping[str, Any] | None]] = [
        ("train -> test", unseen["train_test"]),
        (f"{unseen['kfold']['k']}-fold over questions" if unseen["kfold"] else "k-fold", unseen["kfold"]),
        *((f"{c['fitted_on']} -> {c['judged_on']} (cap {c['cap']})", c) for c in unseen["cross"]),
    ]
    for name, f in named:
        if f is None:
            continue
        lo, hi = f["loss_ci95"]
        slo, shi = f["saved_ci95"]
        rows.append(
            [
                name,
                str(f["questions"]),
                _pct(f["baseline_accuracy"], 2),
                _pct(f["accuracy"], 2),
                f"{_pt(f['loss'])} [{_pt(lo)}, {_pt(hi)}]",
                f"{_pct(f['saved'])} [{_pct(slo)}, {_pct(shi)}]",
            ]
        )
    return rows


def batch_table(result: Mapping[str, Any]) -> str:
    """The figures as a readable table, with the uniform curve at a few k and the notes."""
    rows = []
    for name, f in result["methods"].items():
        lo, hi = f["accuracy_ci95"]
        rows.append(
            [
                name,
                _pct(f["accuracy"], 2),
                f"{_pct(lo, 2)}-{_pct(hi, 2)}",
                f"{f['tokens']:.0f}",
                f"{f['samples']:.2f}",
                f"{f['rounds']:.2f}",
                _pct(f["saved"]),
                _pct(f["oracle_share"]),
                f"{_pt(f['loss'])} [{_pt(f['loss_ci95'][0])}, {_pt(f['loss_ci95'][1])}]",
            ]
        )
    head = (
        f"bench batch: {result['algorithm']} on {result['traces']}, split {result['split']} "
        f"({result['questions']} questions), cap {result['cap']}, {result['seeds']} sample orders"
    )
    table = format_table(
        [
            "method",
            "accuracy",
            "95% over orders",
            "tokens",
            "samples",
            "rounds",
            "saved",
            "of oracle",
            "loss pt [95% over questions]",
        ],
        rows,
    )
    curve = result["uniform_curve"]
    ks = sorted({k for k in (1, 2, 3, 5, 10, 15, 20, 30, result["cap"]) if k <= result["cap"]})
    uniform = "uniform: " + ", ".join(
        f"k={c['k']} {_pct(c['accuracy'], 2)} @ {c['tokens']:.0f}" for c in curve if c["k"] in ks
    )
    ours = result["ours"]
    lines = [head, table, uniform, f"ours: {ours['source']}, calibrated on {ours['calibrated_on']}"]
    unseen = result.get("unseen")
    if unseen:
        settings = unseen["settings"]
        bound = (
            f"bootstrap upper bound at {settings['confidence']:g}"
            if settings["confidence"] is not None
            else f"{settings['safety']:g} standard errors"
        )
        lines.append(
            f"unseen questions: a rule calibrated afresh (epsilon {settings['epsilon']:g}, {bound}), judged "
            "on questions its calibration never saw; loss = full-budget accuracy - the rule's, in points"
        )
        lines.append(
            format_table(
                ["fitted -> judged", "questions", "full budget", "rule", "loss pt [95%]", "saved [95%]"],
                _unseen_rows(unseen),
            )
        )
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"({result['elapsed_s']:.1f} s)")
    return "\n".join(lines)


def plot_batch(result: Mapping[str, Any], path: str | Path) -> None:
    """Token-to-accuracy chart: the uniform curve and one point per method."""
    plot_token_accuracy(
        path,
        curve=[(c["tokens"], c["accuracy"]) for c in result["uniform_curve"]],
        points={name: (f["tokens"], f["accuracy"]) for name, f in result["methods"].items()},
        title=f"{result['algorithm']} on {result['traces']} ({result['split']}, {result['questions']} "
        f"questions, {result['seeds']} orders)",
    )
