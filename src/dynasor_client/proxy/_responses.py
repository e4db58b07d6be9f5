"""OpenAI-shaped bodies and stream chunks for the answers of dynasor programs.

Extension fields (absent from OpenAI's API; clients that do not know them ignore them, and the openai
SDK keeps them: ``response.dynasor``, ``response.usage.dynasor_saved_tokens``):

- ``usage.completion_tokens`` counts *every* token generated upstream for the request: all samples
  (sc, best-of-N), probes and the forced answer (Dynasor-CoT), reward-model tokens;
  ``usage.prompt_tokens`` every prompt token sent (each round, each probe).
- ``usage.dynasor_tokens``: ``{"generated", "probe", "reward"}``, the split of ``completion_tokens``.
- ``usage.dynasor_saved_tokens``: tokens saved against the fixed budget, an estimate, never
  negative. sc / best-of-N: the completion (and reward) tokens the ``n - k`` samples not drawn would
  have cost at the mean of the ``k`` drawn. Dynasor-CoT: the chain decoded to ``max_tokens`` without
  probes (an upper bound of the baseline) minus what was spent.
- ``usage.dynasor_extra_tokens``: tokens spent beyond that baseline (never negative; at most one of
  the two is not 0): a Dynasor-CoT chain that finished on its own (or filled the context) saved
  nothing and cost its probes.
- ``dynasor`` (top level of a body; on the final chunk of a stream): ``algorithm``, ``answer``,
  ``confidence`` (the last certaindex), ``stop_reason``, ``samples`` (drawn), ``max_samples``,
  ``answers`` (each sample's or probe's answer), ``sample_tokens`` (sc, best-of-N: each sample's
  completion tokens), ``winner`` (index of the sample whose text is the content), ``certaindex``
  ([[observations, value], ...]), ``steps``, ``saved_tokens``, ``extra_tokens``, ``partial``,
  ``program_id``;
  Dynasor-CoT adds ``probes``, ``generated_tokens``, ``forced``.
- Progress chunks (``dynasor.progress: true``, streams only): ``choices: []`` and
  ``dynasor: {"progress": {"observations", "certaindex", "answer", "tokens"}}``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from ..endpoints import ToolCall
from ..program import TokenUsage
from ._sse import event

Kind = Literal["completions", "chat"]


def usage_body(tokens: TokenUsage, saved: int | None, extra: int = 0) -> dict[str, Any]:
    completion = tokens.generated + tokens.probe + tokens.reward
    return {
        "prompt_tokens": tokens.prompt,
        "completion_tokens": completion,
        "total_tokens": tokens.prompt + completion,
        "prompt_tokens_details": {"cached_tokens": tokens.cached_prompt},
        "dynasor_tokens": {"generated": tokens.generated, "probe": tokens.probe, "reward": tokens.reward},
        "dynasor_saved_tokens": saved,
        "dynasor_extra_tokens": extra,
    }


def billed_tokens(tokens: TokenUsage) -> int:
    """What a request costs its key: the ``total_tokens`` its usage reports."""
    return tokens.prompt + tokens.generated + tokens.probe + tokens.reward


class Answer:
    """The response of one dynasor request (chat or legacy completion), whole or chunk by chunk."""

    def __init__(self, kind: Kind, model: str) -> None:
        self.kind, self.model = kind, model
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id = f"{prefix}-dynasor-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.role_sent = False

    def _chunk(self, choices: list[dict[str, Any]], **fields: Any) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return event(
            {
                "id": self.id,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **fields,
            }
        )

    def delta(
        self,
        content: str = "",
        *,
        reasoning: str | None = None,
        finish: str | None = None,
        tool_calls: tuple[ToolCall, ...] = (),
        **fields: Any,
    ) -> bytes:
        """A chunk adding ``content`` (and ``reasoning``, ``tool_calls``); the first one carries the role."""
        if self.kind == "completions":
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
            return self._chunk([choice], **fields)
        delta: dict[str, Any] = {}
        if not self.role_sent:
            delta["role"] = "assistant"
            self.role_sent = True
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content or (finish is None and not tool_calls):
            delta["content"] = content
        if tool_calls:
            delta["tool_calls"] = [call.as_dict(i) for i, call in enumerate(tool_calls)]
        return self._chunk(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **fields
        )

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        return self._chunk([], usage=usage)

    def progress_chunk(self, progress: dict[str, Any]) -> bytes:
        return self._chunk([], dynasor={"progress": progress})

    def body(
        self,
        text: str,
        *,
        reasoning: str | None,
        finish: str,
        usage: dict[str, Any],
        dynasor: dict[str, Any],
        tool_calls: tuple[ToolCall, ...] = (),
    ) -> dict[str, Any]:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
            if reasoning:
                message["reasoning_content"] = reasoning
            if tool_calls:
                message["tool_calls"] = [call.as_dict() for call in tool_calls]
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
            "dynasor": dynasor,
        }
