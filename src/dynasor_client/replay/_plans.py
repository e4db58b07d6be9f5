"""What the replay engine decides for a request: a plan of choices (token pieces), or reward scores."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from ..traces import TraceQuestion

__all__ = ["ReplayChoice", "ReplayPlan", "RewardScores"]


@dataclass(frozen=True, slots=True)
class ReplayChoice:
    """One choice of a plan: the pieces to send and how it ends.

    ``sample`` is the recorded sample (None for a probe that continues none); ``start`` the index of
    the sample's token that the first piece is (or is the rest of); ``tokens`` the number the timing
    model must produce (at least 1: a sample already at its end still produces its stop token).
    """

    sample: int | None
    start: int
    pieces: tuple[str, ...]
    text: str
    finish_reason: str
    probe: bool = False
    stop_reason: str | None = None
    logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] | None = None

    @property
    def tokens(self) -> int:
        return max(1, len(self.pieces))

    @property
    def num_tokens(self) -> int:
        return len(self.pieces)


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What one request gets: the question, its prompt cost and the choices."""

    question: TraceQuestion
    question_index: int
    program: str
    prompt_keys: list[Hashable]
    choices: tuple[ReplayChoice, ...]
    prefix_tokens: int
    probe: bool

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_keys)


@dataclass(frozen=True, slots=True)
class RewardScores:
    """Reward-model scores of one input (see :meth:`~._engine.ReplayEngine.rewards`)."""

    question_id: str
    sample: int
    prefix_tokens: int
    scores: tuple[float, ...]
    prompt_tokens: int
    approximation: str | None = None
