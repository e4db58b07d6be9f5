"""The demo's figures: per method, accuracy, tokens and stop reasons; the table and the plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..certainty.answers import default_equivalence
from ..program import ProgramResult, StopReason

# --------------------------------------------------------------------------------------- figures
from ._questions import DemoQuestion


@dataclass
class MethodFigures:
    """One method's outcome over the questions."""

    name: str
    label: str
    questions: int
    correct: int
    tokens: int  # generated tokens, all questions
    prompt_tokens: int
    samples: int
    wall_s: float
    stops: dict[str, int]
    failed: int = 0
    modelled_s: float | None = None  # the replay engine's modelled GPU seconds

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "questions": self.questions,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "tokens": self.tokens,
            "tokens_per_question": self.tokens / self.questions if self.questions else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "samples": self.samples,
            "samples_per_question": self.samples / self.questions if self.questions else 0.0,
            "wall_s": self.wall_s,
            "modelled_gpu_s": self.modelled_s,
            "stops": dict(self.stops),
            "failed": self.failed,
        }


@dataclass
class DemoReport:
    """Everything the demo measured (``--json`` writes :meth:`as_dict`)."""

    backend: str
    model: str
    n: int
    max_tokens: int | None
    seed: int
    rule: dict[str, Any]
    rule_text: str
    rounds: list[int]
    plain: MethodFigures
    certaindex: MethodFigures
    per_question: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def saved(self) -> float:
        return 1.0 - self.certaindex.tokens / self.plain.tokens if self.plain.tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "demo": "self-consistency: plain vs certaindex",
            "backend": self.backend,
            "source": self.source,
            "model": self.model,
            "questions": self.plain.questions,
            "n": self.n,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "rule": self.rule,
            "rule_text": self.rule_text,
            "rounds": self.rounds,
            "methods": {"plain": self.plain.as_dict(), "certaindex": self.certaindex.as_dict()},
            "saved": self.saved,
            "accuracy_delta": self.certaindex.accuracy - self.plain.accuracy,
            "per_question": self.per_question,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
        }


def is_correct(answer: str | None, gold: str) -> bool:
    """The answer equals the gold one under the library's normalisation and math equivalence."""
    return answer is not None and bool(default_equivalence()(answer, gold))


def _figures(
    name: str,
    label: str,
    questions: Sequence[DemoQuestion],
    results: Sequence[ProgramResult | None],
    wall_s: float,
) -> tuple[MethodFigures, list[bool]]:
    stops = {reason.value: 0 for reason in (StopReason.CONFIDENT, StopReason.HOPELESS, StopReason.CAP)}
    correct: list[bool] = []
    tokens = prompt = samples = failed = 0
    for question, result in zip(questions, results, strict=True):
        if result is None:
            failed += 1
            correct.append(False)
            continue
        correct.append(is_correct(result.answer, question.gold))
        tokens += result.tokens.generated
        prompt += result.tokens.prompt
        samples += len(result.answers)
        stops[result.stop_reason.value] = stops.get(result.stop_reason.value, 0) + 1
    figures = MethodFigures(
        name, label, len(questions), sum(correct), tokens, prompt, samples, wall_s, stops, failed
    )
    return figures, correct


# --------------------------------------------------------------------------------------- output


def format_table(report: DemoReport) -> str:
    """The summary table (one row per method) and what the columns mean."""
    replay = report.backend == "replay"
    time_head = "GPU s*" if replay else "wall s"
    head = (
        f"{'method':<18} {'accuracy':>13} {'tokens':>9} {'saved':>6} {'samples/q':>9} {time_head:>7}"
        f" {'confident':>9} {'hopeless':>8} {'ran to n':>8}"
    )
    lines = [head, "-" * len(head)]
    for m in (report.plain, report.certaindex):
        saved = "-" if m is report.plain else f"{report.saved:.0%}"
        seconds = m.modelled_s if replay and m.modelled_s is not None else m.wall_s
        confident = m.stops.get(StopReason.CONFIDENT.value, 0)
        cut = m.stops.get(StopReason.HOPELESS.value, 0)
        full = m.stops.get(StopReason.CAP.value, 0)
        if m is report.plain:
            confident_s, cut_s = "-", "-"
        else:
            confident_s, cut_s = str(confident), str(cut)
        accuracy = f"{m.correct}/{m.questions} {m.accuracy:4.0%}"
        lines.append(
            f"{m.label:<18} {accuracy:>13} {m.tokens:>9,} {saved:>6} {m.samples / max(m.questions, 1):>9.1f}"
            f" {seconds:>7.1f} {confident_s:>9} {cut_s:>8} {full:>8}"
        )
    lines.append("")
    lines.append(
        f"tokens: generated tokens over all questions; saved: certaindex vs plain SC. certaindex rule: "
        f"{report.rule_text}."
    )
    if replay:
        lines.append(
            "* modelled GPU seconds of the replay engine's timing model (wall time is not the GPU's: "
            f"plain {report.plain.wall_s:.1f} s, certaindex {report.certaindex.wall_s:.1f} s here)."
        )
    failed = report.plain.failed + report.certaindex.failed
    if failed:
        lines.append(f"{failed} program(s) failed and count as wrong; the first: {report.errors[0]}")
    return "\n".join(lines)


def write_plot(report: DemoReport, path: str | Path) -> bool:
    """Save the figure (tokens, accuracy, stop reasons per method); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    methods = (report.plain, report.certaindex)
    labels = [m.label for m in methods]
    colours = ["#8c8c8c", "#1f77b4"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    ax = axes[0]
    bars = ax.bar(labels, [m.tokens / max(m.questions, 1) for m in methods], color=colours)
    ax.set_title("generated tokens per question")
    ax.bar_label(bars, labels=["", f"-{report.saved:.0%}"])
    ax = axes[1]
    bars = ax.bar(labels, [100 * m.accuracy for m in methods], color=colours)
    ax.bar_label(bars, labels=[f"{m.correct}/{m.questions}" for m in methods])
    ax.set_ylim(0, 105)
    ax.set_title("accuracy (%)")
    ax = axes[2]
    bottom = [0.0, 0.0]
    for reason, colour in (("confident", "#2ca02c"), ("hopeless", "#d62728"), ("cap", "#7f7f7f")):
        values = [float(m.stops.get(reason, 0)) for m in methods]
        name = {"cap": f"ran to n={report.n}"}.get(reason, reason)
        ax.bar(labels, values, bottom=bottom, color=colour, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("why each question stopped")
    ax.set_ylim(0, 1.3 * max(report.plain.questions, 1))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper center", fontsize=8, ncol=3)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"self-consistency on {report.model} ({report.backend}): {report.plain.questions} questions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
