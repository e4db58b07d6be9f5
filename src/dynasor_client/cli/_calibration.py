"""What the ``calibrate`` and ``bench certaindex`` subcommands do (the CLI only parses arguments)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..calibration import (
    DEFAULT_CONFIDENCE,
    TEST_FRACTION,
    CalibrationResult,
    Objective,
    Replay,
    Split,
    bench_certaindex,
    calibrate,
    evaluate_published,
    label_traces,
    load_traces,
    loss_estimate,
    select_split,
)
from ..traces import file_sha256


def calibrate_command(
    *,
    traces: str | Path,
    out: str | Path,
    cap: int = 30,
    epsilon: float = 0.002,
    split: Split = "train",
    orders: int = 20,
    seed: int = 0,
    objective: Objective = "tokens",
    max_rounds: float | None = None,
    folds: int = 5,
    safety: float = 1.0,
    confidence: float | None = DEFAULT_CONFIDENCE,
    evaluate_split: Split | None = None,
) -> CalibrationResult:
    """Calibrate on one split of a traces file, optionally score on another, and save the JSON."""
    path = Path(traces)
    questions = load_traces(path)
    chosen = select_split(questions, split)
    if not chosen:
        raise ValueError(f"{path}: no questions in split {split!r}")
    replay = Replay(label_traces(chosen, source=path.name), orders=orders, cap=cap, seed=seed)
    result = calibrate(
        replay,
        epsilon=epsilon,
        objective=objective,
        max_rounds=max_rounds,
        folds=folds,
        safety=safety,
        confidence=confidence,
        fitted_on={
            "traces": path.name,
            "sha256": file_sha256(path),
            "split": split,
            "test_fraction": TEST_FRACTION,
        },
    )
    if evaluate_split is not None:
        result.held_out = evaluate_on_split(result, questions, evaluate_split, source=path.name)
    result.save(out)
    return result


def evaluate_on_split(
    result: CalibrationResult, questions: Any, split: Split, *, source: str = ""
) -> dict[str, Any]:
    """Score the calibrated rule, the full budget and the paper's rule on ``split`` (same settings)."""
    held = select_split(questions, split)
    if not held:
        raise ValueError(f"no questions in split {split!r}")
    info = result.fitted_on
    replay = Replay(
        label_traces(held, source=source),
        orders=int(info.get("orders", 20)),
        cap=int(info.get("cap", 30)),
        seed=int(info.get("seed", 0)),
    )
    return {
        "split": split,
        "questions": replay.data.questions,
        "calibrated": replay.evaluate(result.rule).to_dict(),
        "loss": loss_estimate(replay.paired_loss(replay.stops(result.rule)), seed=replay.seed).to_dict(),
        "baseline": replay.baseline().to_dict(),
        "reference": evaluate_published(replay),
    }


def held_out_summary(held_out: dict[str, Any]) -> str:
    c, b = held_out["calibrated"], held_out["baseline"]
    lines = [
        f"on the {held_out['split']} split ({held_out['questions']} questions): baseline accuracy "
        f"{b['accuracy']:.4f} ({b['tokens']:.0f} tokens); calibrated {c['accuracy']:.4f}, saved "
        f"{c['saved']:.1%}, {c['rounds']:.2f} rounds"
    ]
    if "loss" in held_out:
        loss = held_out["loss"]
        lines.append(
            f"  loss on these unseen questions: {100 * loss['loss']:+.2f} pt (95% over questions "
            f"{100 * loss['ci95'][0]:+.2f} to {100 * loss['ci95'][1]:+.2f})"
        )
    for name, r in held_out["reference"].items():
        lines.append(
            f"  published {name}: accuracy {r['accuracy']:.4f}, saved {r['saved']:.1%},"
            f" {r['rounds']:.2f} rounds"
        )
    return "\n".join(lines)


def bench_command(
    *,
    json_out: str | Path | None = None,
    traces: str | Path | None = None,
    questions: int = 1000,
    orders: int = 20,
) -> dict[str, Any]:
    """Run :func:`bench_certaindex`, write its JSON to ``json_out`` (when given) and return it."""
    figures = bench_certaindex(traces=traces, questions=questions, orders=orders)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return figures


def bench_summary(figures: dict[str, Any]) -> str:
    r = figures["replay"]
    return (
        f"cluster 32 plain-number answers ({figures['cluster_function']}): "
        f"{figures['cluster_32_numbers_ms']:.4f} ms\n"
        f"evaluate one rule over {r['questions']} questions x {r['samples']} samples x {r['orders']} orders "
        f"({r['source']}): build {figures['replay_build_s']:.2f} s"
        f" + evaluate {figures['evaluate_rule_s']:.2f} s = {figures['evaluate_total_s']:.2f} s"
    )
