"""The chat an algorithm asks."""

from __future__ import annotations

from collections.abc import Sequence

from ..endpoints import Message


def question_messages(
    question: str, system: str | None, messages: Sequence[Message] | None = None
) -> list[Message]:
    """The chat an algorithm asks: ``messages`` when given, else an optional system prompt + the question."""
    if messages is not None:
        return list(messages)
    return [
        *([{"role": "system", "content": system}] if system else []),
        {"role": "user", "content": question},
    ]
