"""Token estimates, and the meter that counts what a request streamed before it failed.

Billing needs a count even when the server gives none: a request that was cancelled, timed out,
dropped mid-stream or answered without ``usage``. The rules (docs/proxy.md, "Budgets and
billing"):

- text is estimated at one token per :data:`CHARS_PER_TOKEN` characters (rounded up);
- a prompt of token ids is its length; chat messages are their contents' estimate plus
  :data:`MESSAGE_OVERHEAD` tokens each (role and template);
- a streamed choice counts its logprob tokens where the chunk has them, else the estimate of its
  text, at least one token per chunk with content.

A :class:`Meter` set in :data:`meter_var` around a request is told, by the endpoint, when the
request reached the server (its prompt is then billed) and what each chunk streamed.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from typing import Any

from ._types import Message, Prompt, Usage

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    """Tokens in ``text``, estimated (module docs)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def prompt_estimate(prompt: Prompt | None, messages: Sequence[Message] | None = None) -> int:
    """The estimated tokens of a completion ``prompt`` or of chat ``messages`` (module docs)."""
    if messages is not None:
        return sum(MESSAGE_OVERHEAD + estimate_tokens(_text(m.get("content"))) for m in messages)
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return estimate_tokens(prompt)
    return len(prompt)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content parts
        return "".join(
            p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def chunk_tokens(chunk: Mapping[str, Any]) -> int:
    """Tokens one response or stream chunk carries across its choices (module docs)."""
    total = 0
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, Mapping):
            continue
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, Mapping):
            counted = logprobs.get("content") or logprobs.get("tokens")
            if isinstance(counted, list) and counted:
                total += len(counted)
                continue
        part = choice.get("delta") or choice.get("message") or choice
        text = ""
        if isinstance(part, Mapping):
            for key in ("text", "content", "reasoning_content", "reasoning"):
                value = part.get(key)
                if isinstance(value, str):
                    text += value
        if text:
            total += max(1, estimate_tokens(text))
    return total


class Meter:
    """What requests sent under it cost so far, for billing the ones that do not complete.

    ``prompt`` is the estimate billed once a request reached the server; every chunk adds its
    tokens to ``completion``. :meth:`usage` is what an aborted request is billed."""

    __slots__ = ("completion", "prompt", "prompt_tokens", "sent")

    def __init__(self, prompt_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.sent = 0  # requests that reached the server
        self.prompt = 0
        self.completion = 0

    def reached(self) -> None:
        """A request reached the server: its prompt is billed."""
        self.sent += 1
        self.prompt += self.prompt_tokens

    def streamed(self, chunk: Mapping[str, Any]) -> None:
        self.completion += chunk_tokens(chunk)

    def usage(self) -> Usage:
        return Usage(self.prompt, self.completion)


meter_var: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("dynasor_meter", default=None)
