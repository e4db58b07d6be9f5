"""How much accuracy a rule loses on questions like these, with an interval over questions.

The loss of a rule is the full budget's accuracy minus the rule's, paired: the same sample orders,
per question averaged over orders. New questions are a new draw of questions, so its uncertainty is
over questions: :class:`QuestionBootstrap` resamples whole questions with replacement (``boots``
times, seeded) and reads the mean loss in each resample.

A rule chosen as the cheapest of many candidates whose *point* loss is within the tolerance tends
to be one whose point estimate was lucky (the winner's curse): on SVAMP a rule calibrated that way
lost 0.29 points on unseen questions where its calibration showed none. The search can instead
require the bootstrap's one-sided upper bound at ``confidence`` to be within the tolerance
(:func:`~dynasor_client.calibration.search` ``confidence=``): a candidate is then accepted only
when the data show it keeps accuracy, not merely fail to show that it loses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..certainty import FloatArray

__all__ = ["LossEstimate", "QuestionBootstrap", "loss_estimate"]


@dataclass(frozen=True)
class LossEstimate:
    """Accuracy lost against the full budget (fractions: 0.002 = 0.2 points; negative = gained)."""

    loss: float
    #: 2.5th-97.5th percentile of the loss over question resamples
    ci95: tuple[float, float]
    #: one-sided upper bound: the ``confidence`` quantile of the resampled losses
    upper: float
    confidence: float
    questions: int
    boots: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "ci95": list(self.ci95),
            "upper": self.upper,
            "confidence": self.confidence,
            "questions": self.questions,
            "boots": self.boots,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossEstimate:
        lo, hi = data["ci95"]
        return cls(
            loss=float(data["loss"]),
            ci95=(float(lo), float(hi)),
            upper=float(data["upper"]),
            confidence=float(data["confidence"]),
            questions=int(data["questions"]),
            boots=int(data["boots"]),
        )

    def describe(self) -> str:
        return (
            f"{100 * self.loss:+.2f} pt (95% over questions {100 * self.ci95[0]:+.2f} to "
            f"{100 * self.ci95[1]:+.2f}; {self.confidence:.0%} upper bound {100 * self.upper:+.2f})"
        )


class QuestionBootstrap:
    """``boots`` resamples of ``questions`` questions with replacement, drawn once (seeded) so that
    every candidate is judged on the same resamples (paired)."""

    def __init__(self, questions: int, *, boots: int = 1000, seed: int = 0) -> None:
        if questions < 1 or boots < 1:
            raise ValueError("the bootstrap needs at least one question and one resample")
        self.questions, self.boots = questions, boots
        rng = np.random.default_rng([seed, questions, 0xB007])
        counts = rng.multinomial(questions, np.full(questions, 1.0 / questions), size=boots)
        #: [boots, questions] weights: how often each question is drawn, over the resample size
        self.weights = counts.astype(np.float64) / questions

    def means(self, per_question: FloatArray) -> FloatArray:
        """The mean of ``per_question`` in every resample, ``[boots]``."""
        values = np.asarray(per_question, dtype=np.float64)
        if values.shape != (self.questions,):
            raise ValueError(f"expected {self.questions} per-question values, got shape {values.shape}")
        return np.asarray(self.weights @ values, dtype=np.float64)

    def upper(self, per_question: FloatArray, confidence: float) -> float:
        """The one-sided upper bound of the mean at ``confidence`` (fast; for the search)."""
        return float(np.quantile(self.means(per_question), confidence))

    def estimate(self, per_question_loss: FloatArray, confidence: float = 0.95) -> LossEstimate:
        means = self.means(per_question_loss)
        return LossEstimate(
            loss=float(np.mean(per_question_loss)),
            ci95=(float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))),
            upper=float(np.quantile(means, confidence)),
            confidence=confidence,
            questions=self.questions,
            boots=self.boots,
        )


def loss_estimate(
    per_question_loss: FloatArray, *, confidence: float = 0.95, boots: int = 1000, seed: int = 0
) -> LossEstimate:
    """:class:`LossEstimate` of per-question losses (full-budget correctness minus the rule's,
    averaged over orders), bootstrapped over questions."""
    values = np.asarray(per_question_loss, dtype=np.float64)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return QuestionBootstrap(len(values), boots=boots, seed=seed).estimate(values, confidence)
