"""The figures of ``bench cot``: means per method with 95% intervals over questions, the paired
difference of each method to ``full``, and the table.

The unit of every interval is the question: a question's figure is its mean over the seeds, and the
interval is Student's t over questions (the seeds of one question are not independent draws of the
dataset). The token saving against ``full`` is a ratio of sums, ``1 - tokens(method) /
tokens(full)`` over the same questions; its interval is a percentile bootstrap over questions
(2,000 resamples, seeded).
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._common import format_table
from ._online_stats import interval95, mean

if TYPE_CHECKING:
    from ._cot import CotOutcome

__all__ = ["cot_table", "summarize"]

BOOTSTRAP = 2000
FIGURES: dict[str, Callable[[CotOutcome], float]] = {
    "accuracy": lambda o: float(o.correct),
    "tokens": lambda o: float(o.tokens),
    "generated": lambda o: float(o.generated),
    "probe": lambda o: float(o.probe),
    "prompt": lambda o: float(o.prompt),
    "requests": lambda o: float(o.requests),
    "wall_s": lambda o: o.wall_s,
}


def _per_question(outcomes: Sequence[CotOutcome], figure: Callable[[CotOutcome], float]) -> dict[str, float]:
    by_question: dict[str, list[float]] = collections.defaultdict(list)
    for outcome in outcomes:
        by_question[outcome.question].append(figure(outcome))
    return {q: mean(values) for q, values in by_question.items()}


def _with_interval(values: Sequence[float], within: tuple[float, float] | None = None) -> dict[str, float]:
    """The mean and its 95% interval (clipped to ``within``: a t-interval of a rate can leave [0, 1])."""
    low, high = interval95(list(values))
    if within is not None and math.isfinite(low) and math.isfinite(high):
        low, high = max(low, within[0]), min(high, within[1])
    return {"mean": mean(values), "low": low, "high": high}


def _saving(method: dict[str, float], full: dict[str, float], seed: int = 0) -> dict[str, float]:
    """``1 - sum(method) / sum(full)`` over the common questions, with a bootstrap interval."""
    common = sorted(method.keys() & full.keys())
    if not common or sum(full[q] for q in common) <= 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan}

    def ratio(questions: Sequence[str]) -> float:
        base = sum(full[q] for q in questions)
        return 1 - sum(method[q] for q in questions) / base if base > 0 else math.nan

    rng = random.Random(seed)
    draws = sorted(ratio(rng.choices(common, k=len(common))) for _ in range(BOOTSTRAP))
    draws = [d for d in draws if math.isfinite(d)]
    if len(common) < 2 or not draws:
        return {"mean": ratio(common), "low": math.nan, "high": math.nan}
    return {
        "mean": ratio(common),
        "low": draws[int(0.025 * len(draws))],
        "high": draws[int(0.975 * len(draws)) - 1],
    }


def summarize(outcomes: Sequence[CotOutcome], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: each figure's mean and 95% interval over questions, stop reasons, and (beside
    ``full``) the paired accuracy difference and token saving."""
    grouped: dict[str, list[CotOutcome]] = collections.defaultdict(list)
    for outcome in outcomes:
        grouped[outcome.method].append(outcome)
    per_q = {m: {name: _per_question(grouped[m], fig) for name, fig in FIGURES.items()} for m in methods}
    out: dict[str, Any] = {}
    for method in methods:
        figures: dict[str, Any] = {
            "programs": len(grouped[method]),
            "questions": len(per_q[method]["accuracy"]),
            **{name: _with_interval(list(per_q[method][name].values()), (0.0, math.inf)) for name in FIGURES},
            "accuracy": _with_interval(list(per_q[method]["accuracy"].values()), (0.0, 1.0)),
            "stop_reasons": dict(collections.Counter(o.stop_reason for o in grouped[method])),
        }
        if method != "full" and "full" in per_q:
            acc, base = per_q[method]["accuracy"], per_q["full"]["accuracy"]
            figures["vs_full"] = {
                "accuracy_diff": _with_interval(
                    [acc[q] - base[q] for q in sorted(acc.keys() & base.keys())], (-1.0, 1.0)
                ),
                "token_saving": _saving(per_q[method]["tokens"], per_q["full"]["tokens"]),
                "wall_saving": _saving(per_q[method]["wall_s"], per_q["full"]["wall_s"]),
            }
        out[method] = figures
    return out


def _pm(figure: dict[str, float], fmt: str, scale: float = 1.0) -> str:
    value, low, high = (figure[k] * scale for k in ("mean", "low", "high"))
    if not math.isfinite(value):
        return "-"
    if not (math.isfinite(low) and math.isfinite(high)):
        return format(value, fmt)
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def cot_table(result: dict[str, Any]) -> str:
    """One row per method: accuracy, tokens (probes included), requests and wall time per question,
    each with its 95% interval over questions; the token saving and accuracy difference to full."""
    config, server = result["config"], result["server"]
    head = (
        f"{result['dataset']}: {len(result['questions_asked'])} questions x {config['seeds']} seeds, "
        f"max_tokens {config['max_tokens']}, {server['model']} ({server['described']}); "
        f"means per program, [95% interval over questions]"
    )
    rows = []
    for method, f in result["summary"].items():
        vs = f.get("vs_full")
        rows.append([
            method, _pm(f["accuracy"], ".0%"), _pm(f["tokens"], ".0f"), f"{f['probe']['mean']:.0f}",
            _pm(f["requests"], ".1f"), _pm(f["wall_s"], ".1f"),
            "-" if vs is None else _pm(vs["token_saving"], ".0%"),
            "-" if vs is None else _pm(vs["accuracy_diff"], "+.0%"),
            " ".join(f"{k}:{v}" for k, v in sorted(f["stop_reasons"].items())),
        ])  # fmt: skip
    columns = ["method", "accuracy", "tokens (incl. probes)", "probe", "requests", "wall s",
               "tokens saved vs full", "accuracy vs full", "stops"]  # fmt: skip
    return head + "\n" + format_table(columns, rows)
