"""Plain data of the endpoint layer: what a caller asks for and the normalised result it gets back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

#: The two generation routes: ``/v1/completions`` and ``/v1/chat/completions``.
Kind: TypeAlias = Literal["completions", "chat"]
Role: TypeAlias = Literal["system", "user", "assistant", "tool", "developer"]
#: A chat message as the OpenAI API takes it (``{"role": ..., "content": ...}``, tool calls allowed).
Message: TypeAlias = Mapping[str, Any]
#: A completions prompt: text, or token ids for servers that accept them (vLLM, llama.cpp).
Prompt: TypeAlias = str | Sequence[int]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings of one generation request.

    ``extra_body`` passes server extras through untouched (``top_k``, ``min_tokens``, ``priority``,
    vLLM's ``return_token_ids``, ...). ``top_logprobs`` implies ``logprobs``.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        if isinstance(self.stop, str):  # a bare string would be split into characters
            object.__setattr__(self, "stop", (self.stop,))

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    def for_sample(self, index: int) -> SamplingParams:
        """These params for a request whose first sample is a program's ``index``-th: sample ``i`` of a
        seeded program is drawn with ``seed + i`` (as :class:`~dynasor_client.Endpoint` numbers the
        parts of a split ``n``). A server repeats a seeded request's samples, so a later request that
        kept the seed would draw the same samples again. Unseeded params come back unchanged."""
        if self.seed is None or index == 0:
            return self
        return replace(self, seed=self.seed + index)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability and, when asked for, the top-k alternatives."""

    token: str
    logprob: float
    token_id: int | None = None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call a chat answer makes (``message.tool_calls[i]``, or its stream deltas joined).

    ``arguments`` is the JSON text as the model wrote it; :attr:`key` names the call by its function
    and its arguments in canonical JSON (sorted keys, no spaces), so equal calls have equal keys.
    """

    name: str
    arguments: str
    id: str | None = None
    type: str = "function"

    @property
    def key(self) -> str:
        try:
            arguments = json.dumps(
                json.loads(self.arguments or "{}"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
        except ValueError:  # not JSON: the text as written
            arguments = self.arguments.strip()
        return f"{self.name}({arguments})"

    def as_dict(self, index: int | None = None) -> dict[str, Any]:
        """The OpenAI shape (with ``index`` for a stream delta)."""
        call: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index, **call}


def tool_calls_key(calls: Sequence[ToolCall]) -> str | None:
    """The answer a sample's tool calls stand for in a vote (None: no call): each call's
    :attr:`ToolCall.key`, in order, joined by ``"; "``."""
    return "; ".join(call.key for call in calls) if calls else None


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated sequence, normalised across servers.

    ``text`` is the answer text with any ``<think>...</think>`` block removed; ``reasoning`` is the
    thinking, from a separate ``reasoning_content``/``reasoning`` field or from in-text think tags;
    ``raw_text`` is the generated text exactly as the server returned it (what a continuation appends).
    ``num_tokens`` is counted per choice (never from ``usage`` when n > 1). ``token_ids`` are the
    generated ids when the server reveals them (llama.cpp logprobs, vLLM ``return_token_ids``).
    ``tool_calls`` are the function calls of a chat answer (``finish_reason`` ``"tool_calls"``).
    """

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None
    reasoning: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    token_ids: tuple[int, ...] | None = None
    raw_text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one logical request (summed over the HTTP requests it took)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        cached = (
            None
            if self.cached_prompt_tokens is None and other.cached_prompt_tokens is None
            else (self.cached_prompt_tokens or 0) + (other.cached_prompt_tokens or 0)
        )
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            cached,
        )


@dataclass(frozen=True, slots=True)
class Generation:
    """The normalised result of one logical generation request.

    ``usage.completion_tokens`` is the sum of the choices' own counts. ``latency_s`` is wall time
    from sending to the last byte; ``ttft_s`` the time to the first token (streaming only).
    ``prompt_token_ids`` is set when the server returned them (vLLM ``return_token_ids``).
    """

    choices: tuple[Choice, ...]
    usage: Usage
    model: str
    request_id: str
    latency_s: float
    ttft_s: float | None = None
    requests: int = 1
    prompt_token_ids: tuple[int, ...] | None = None

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.choices]
