"""Token estimates, and the meter that counts what a request streamed before it failed.

Billing needs a count even when the server gives none: a request that was cancelled, timed out,
dropped mid-stream or answered without ``usage``. The rules (docs/proxy.md, "Budgets and
billing"):

- text is estimated at one token per :data:`CHARS_PER_TOKEN` characters (rounded up);
- a prompt of token ids is its length; chat messages are their contents' estimate plus
  :data:`MESSAGE_OVERHEAD` tokens each (role and template);
- a streamed choice counts its logprob tokens where the chunk has them, else the estimate of its
  text (a tool call's name and arguments included), at least one token per chunk with content.

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
            for call in part.get("tool_calls") or ():  # a call's name and arguments are generated too
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping):
                    text += str(function.get("name") or "") + str(function.get("arguments") or "")
        if text:
            total += max(1, estimate_tokens(text))
    return total


class Attempt:
    """One HTTP request under a :class:`Meter`: its prompt's estimate once it reached the server,
    the tokens counted in what it streamed, and whether it completed (then its ``usage`` counts)."""

    __slots__ = ("body", "completion", "done", "prompt")

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.prompt = 0
        self.completion = 0
        self.done = False

    def reached(self) -> None:
        """The server accepted the request: its prompt is billed."""
        messages = self.body.get("messages")
        prompt = self.body.get("prompt")
        self.prompt = prompt_estimate(
            prompt if isinstance(prompt, str | list) else None,
            messages if isinstance(messages, list) else None,
        )

    def streamed(self, chunk: Mapping[str, Any]) -> None:
        self.completion += chunk_tokens(chunk)


class Meter:
    """What the HTTP requests sent under it (:data:`meter_var`) cost, for billing the ones that did
    not complete: cancelled, timed out, dropped mid-stream, failed, retried."""

    __slots__ = ("attempts",)

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def attempt(self, body: Mapping[str, Any]) -> Attempt:
        attempt = Attempt(body)
        self.attempts.append(attempt)
        return attempt

    def unfinished(self) -> Usage:
        """The estimate of the requests that did not complete (their usage was never reported)."""
        return self._sum(a for a in self.attempts if not a.done)

    def usage(self) -> Usage:
        """The estimate of every request (when the call failed as a whole, completed parts' usage
        is lost with it)."""
        return self._sum(self.attempts)

    @staticmethod
    def _sum(attempts: Any) -> Usage:
        prompt = completion = 0
        for attempt in attempts:
            prompt += attempt.prompt
            completion += attempt.completion
        return Usage(prompt, completion)


meter_var: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("dynasor_meter", default=None)
