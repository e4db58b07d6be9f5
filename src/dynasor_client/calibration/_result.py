"""A calibration result as JSON: the rule, what it is expected to score and cost, and its provenance.

    {"format": "dynasor-calibration/1",
     "rule": {...rule.to_dict()...},
     "expected": {"accuracy", "accuracy_ci95", "tokens", "rounds", "saved", ...},   # the saved rule,
                                                                                      # on its data
     "cross_validated": {...},     # the chosen recipe scored out-of-fold (fitted on other questions)
     "expected_loss": {"loss", "ci95", "upper", "confidence", "questions", "boots"} or null,
                                   # its out-of-fold accuracy loss, bootstrapped over questions
     "baseline": {...},            # full budget (majority of all cap samples), same sample orders
     "reference": {name: {...}},   # published rules (paper's static, Adaptive-Consistency, ESC)
     "recipe": {...}, "families": {...best candidate per family...},
     "fitted_on": {"traces", "sha256", "split", "questions", "question_ids", "cap", "orders", "seed",
                   "epsilon", "objective", "max_rounds", "folds", "test_fraction"},
     "search": {"candidates", "seconds", "notes"},
     "versions": {"dynasor_client", "numpy", "scipy", "python"},
     "held_out": null or {"split", "questions", "calibrated", "baseline", "reference"}}

:func:`~dynasor_client.certainty.load_rule` reads just the rule from such a file, or from a file
holding only a rule (the shipped :func:`~dynasor_client.certainty.default_rule` is one: parameters,
no data).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..certainty import StopRule
from ..certainty.rules import rule_from_json
from ._replay import Evaluation
from ._robust import LossEstimate

FORMAT = "dynasor-calibration/1"
RULE_FORMAT = "dynasor-rule/1"


def _versions() -> dict[str, str]:
    import scipy

    try:
        from importlib.metadata import version

        own = version("dynasor-client")
    except Exception:
        own = "unknown"
    return {
        "dynasor_client": own,
        "numpy": np.__version__,
        "scipy": str(scipy.__version__),
        "python": platform.python_version(),
    }


@dataclass
class CalibrationResult:
    """The chosen rule with its expected figures and where they come from (module docs)."""

    rule: StopRule
    expected: Evaluation
    baseline: Evaluation
    cross_validated: Evaluation | None = None
    recipe: dict[str, Any] | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    families: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=_versions)
    #: figures on another split (``calibrate --evaluate-split``): calibrated, baseline, reference
    held_out: dict[str, Any] | None = None
    #: the out-of-fold loss against the full budget with its interval over questions
    expected_loss: LossEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rule": self.rule.to_dict(),
            "expected": self.expected.to_dict(),
            "cross_validated": None if self.cross_validated is None else self.cross_validated.to_dict(),
            "baseline": self.baseline.to_dict(),
            "reference": self.reference,
            "recipe": self.recipe,
            "families": self.families,
            "fitted_on": self.fitted_on,
            "search": self.search,
            "versions": self.versions,
            "held_out": self.held_out,
            "expected_loss": None if self.expected_loss is None else self.expected_loss.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationResult:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a calibration result (format {data.get('format')!r}, expected {FORMAT!r})")
        cv = data.get("cross_validated")
        loss = data.get("expected_loss")
        return cls(
            rule=rule_from_json(data["rule"]),
            expected=Evaluation.from_dict(data["expected"]),
            baseline=Evaluation.from_dict(data["baseline"]),
            cross_validated=None if cv is None else Evaluation.from_dict(cv),
            recipe=data.get("recipe"),
            fitted_on=dict(data.get("fitted_on", {})),
            families=dict(data.get("families", {})),
            reference=dict(data.get("reference", {})),
            search=dict(data.get("search", {})),
            versions=dict(data.get("versions", {})),
            held_out=data.get("held_out"),
            expected_loss=None if loss is None else LossEstimate.from_dict(loss),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def rule_file(self) -> dict[str, Any]:
        """Parameters only (no question ids): the rule, what it was fitted on, and its figures."""
        fitted_on = {k: v for k, v in self.fitted_on.items() if k != "question_ids"}
        keep = ("accuracy", "accuracy_ci95", "tokens", "saved", "rounds")
        out: dict[str, Any] = {
            "format": RULE_FORMAT,
            "rule": self.rule.to_dict(),
            "fitted_on": fitted_on,
            "expected": {k: self.expected.to_dict()[k] for k in keep},
            "baseline": {k: self.baseline.to_dict()[k] for k in keep},
        }
        if self.cross_validated is not None:
            out["cross_validated"] = {k: self.cross_validated.to_dict()[k] for k in keep}
        if self.expected_loss is not None:
            out["expected_loss"] = self.expected_loss.to_dict()
        if self.held_out is not None:
            out["held_out"] = {
                "split": self.held_out["split"],
                "questions": self.held_out["questions"],
                **{
                    name: {k: self.held_out[name][k] for k in keep}
                    for name in ("calibrated", "baseline")
                    if name in self.held_out
                },
            }
        out["versions"] = self.versions
        return out

    def save_rule(self, path: str | Path) -> None:
        """Write :meth:`rule_file` (what :func:`~dynasor_client.certainty.load_rule` and the shipped
        default rule read)."""
        Path(path).write_text(json.dumps(self.rule_file(), indent=1) + "\n", encoding="utf-8")

    def summary(self) -> str:
        """A few human-readable lines (what the CLI prints)."""
        e, b = self.expected, self.baseline
        lines = [
            f"rule: {json.dumps(self.rule.to_dict())}",
            f"baseline (full budget, cap {b.cap}): accuracy {b.accuracy:.4f}, {b.tokens:.0f} tokens/question",
            f"calibrated: accuracy {e.accuracy:.4f} (95% over orders {e.accuracy_ci95[0]:.4f}-"
            f"{e.accuracy_ci95[1]:.4f}), {e.tokens:.0f} tokens/question, saved {e.saved:.1%}, "
            f"{e.rounds:.2f} rounds",
        ]
        if self.cross_validated is not None:
            c = self.cross_validated
            lines.append(
                f"cross-validated (out of fold): accuracy {c.accuracy:.4f}, saved {c.saved:.1%}, "
                f"{c.rounds:.2f} rounds"
            )
        if self.expected_loss is not None:
            lines.append(f"expected loss on unseen questions (out of fold): {self.expected_loss.describe()}")
        for name, r in self.reference.items():
            lines.append(f"published {name}: accuracy {r['accuracy']:.4f}, saved {r['saved']:.1%}")
        lines += [f"note: {note}" for note in self.search.get("notes", [])]
        return "\n".join(lines)
