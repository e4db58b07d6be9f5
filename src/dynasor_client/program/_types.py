"""What a program spends and returns: token kinds and usage, stop reasons, certaindex points, results."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ..endpoints import Usage

if TYPE_CHECKING:
    from ._context import ProgramContext


class TokenKind(StrEnum):
    """What tokens were spent on."""

    GENERATED = "generated"
    PROBE = "probe"
    REWARD = "reward"


class StopReason(StrEnum):
    """Why a program stopped."""

    CONFIDENT = "confident"  # its certaindex said the answer is settled
    CAP = "cap"  # the knob reached its maximum
    HOPELESS = "hopeless"  # still uncertain after many observations: cut
    BUDGET = "budget"  # its token allowance ran out
    DEADLINE = "deadline"  # its time ran out
    REJECTED = "rejected"  # admission control refused it: it could not meet its deadline


@dataclass(slots=True)
class TokenUsage:
    """Tokens a program used, by kind. Prompt tokens are counted for every kind of request."""

    prompt: int = 0
    cached_prompt: int = 0
    generated: int = 0
    probe: int = 0
    reward: int = 0

    @property
    def total(self) -> int:
        """Everything the server processed: uncached prompt plus generated, probe and reward tokens."""
        return self.prompt - self.cached_prompt + self.generated + self.probe + self.reward

    def add(self, kind: TokenKind, usage: Usage) -> None:
        self.prompt += usage.prompt_tokens
        self.cached_prompt += usage.cached_prompt_tokens or 0
        setattr(self, kind.value, getattr(self, kind.value) + usage.completion_tokens)

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt": self.prompt,
            "cached_prompt": self.cached_prompt,
            "generated": self.generated,
            "probe": self.probe,
            "reward": self.reward,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True)
class CertaindexPoint:
    """The program's certaindex after ``observations`` observations, ``elapsed_s`` after it started,
    and its answer at that point (what it returns if stopped there)."""

    observations: int
    value: float
    tokens: int
    elapsed_s: float
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class ProgramResult:
    """What a program returns."""

    answer: str | None
    confidence: float
    tokens: TokenUsage
    steps: int
    stop_reason: StopReason
    certaindex: tuple[CertaindexPoint, ...]
    program_id: str
    answers: tuple[str | None, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    """True when the program was stopped from outside (deadline, budget) and this is its best
    answer so far: the last one it reported."""
    abstained: bool = False
    """True when the program had an answer but its confidence was below the program's
    ``min_confidence`` (:func:`~dynasor_client.program.as_program`): ``answer`` is then None, and the
    answer it had is ``details["unconfident_answer"]``."""

    def with_floor(self, min_confidence: float | None) -> ProgramResult:
        """This result, or "no answer" (``abstained``) when its confidence is below ``min_confidence``."""
        if min_confidence is None or self.answer is None or self.confidence >= min_confidence:
            return self
        details = {**self.details, "unconfident_answer": self.answer}
        return replace(self, answer=None, abstained=True, details=details)

    @classmethod
    def best_so_far(cls, context: ProgramContext, reason: StopReason, **details: Any) -> ProgramResult:
        """The result of a program stopped from outside: its last reported answer and certaindex."""
        last = context.certaindex[-1] if context.certaindex else None
        return cls(
            answer=None if last is None else last.answer,
            confidence=0.0 if last is None else last.value,
            tokens=context.usage,
            steps=len(context.certaindex),
            stop_reason=reason,
            certaindex=tuple(context.certaindex),
            program_id=context.program_id,
            details=details,
            partial=True,
        )
