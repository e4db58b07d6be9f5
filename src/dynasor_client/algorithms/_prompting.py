"""How an algorithm asks its question and reads the answers: the same for every algorithm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..certainty import AnswerClusters, Equivalence, Extractor, get_extractor
from ..endpoints import Message

DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True, slots=True)
class Prompting:
    """How an algorithm asks and reads (``prompting=Prompting(system=None, task="code")``).

    Args:
        system: the system prompt before the question (None: none); the default asks for the
            final answer in ``\\boxed{}``.
        messages: the whole chat to send instead of the system prompt and the question.
        task: how an answer is read from a response (:func:`~dynasor_client.certainty.get_extractor`).
        equivalence: when two answers are one class (default: math equivalence where installed).
    """

    system: str | None = DEFAULT_SYSTEM
    messages: Sequence[Message] | None = None
    task: str = "math"
    equivalence: Equivalence | None = None

    def chat(self, question: str) -> list[Message]:
        """The chat to send: ``messages`` when given, else the system prompt and the question."""
        if self.messages is not None:
            return list(self.messages)
        return [
            *([{"role": "system", "content": self.system}] if self.system else []),
            {"role": "user", "content": question},
        ]

    def extractor(self) -> Extractor:
        return get_extractor(self.task)

    def clusters(self) -> AnswerClusters:
        """A fresh set of answer classes under this equivalence."""
        return AnswerClusters(self.equivalence)


DEFAULT_PROMPTING = Prompting()
