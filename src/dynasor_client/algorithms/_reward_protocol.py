"""What a reward model is to an algorithm: scores for a response, one per reasoning step.

An outcome reward model gives one score (a list of length 1); a process reward model (PRM) one per
step. Scores are raw (unnormalised); signals normalise them (``RewardCertainty``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RewardModel(Protocol):
    """Scores responses to a question. ``steps`` splits a response into reasoning steps."""

    async def score(self, question: str, steps: Sequence[str]) -> list[float]:
        """One raw score per step of one response (``[score]`` for an outcome reward model)."""
        ...
