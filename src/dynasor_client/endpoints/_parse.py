"""Normalising OpenAI-compatible responses from different servers into :mod:`._types`.

Servers disagree on details a client must absorb:
- logprobs come in the chat shape (``logprobs.content[...]``; llama.cpp returns it even on
  ``/v1/completions``) or the legacy arrays (``tokens``/``token_logprobs``/``top_logprobs``; vLLM);
  vLLM's ``return_tokens_as_token_ids`` spells tokens as ``token_id:N``;
- reasoning arrives in a separate ``reasoning_content``/``reasoning`` field or inline in
  ``<think>...</think>``;
- ``usage.completion_tokens`` counts only the first choice on llama.cpp when n > 1;
- tool calls come whole (``message.tool_calls``) or in stream deltas (``delta.tool_calls``, joined
  by their ``index``: the name once, the arguments in pieces).
Both streamed chunks and whole responses go through the same :class:`ChoiceAccumulator`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import MalformedResponse
from ._types import Choice, TokenLogprob, ToolCall, Usage

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_TOKEN_ID_PREFIX = "token_id:"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split in-text thinking from the answer: ``(reasoning, answer)``.

    ``<think>r</think>a`` gives ``("r", "a")``; a lone ``r</think>a`` (templates that put the opening
    tag in the prompt, as DeepSeek-R1's does) gives the same; an unclosed ``<think>r`` (cut by
    ``max_tokens``) gives ``("r", "")``; text without tags gives ``(None, text)``.
    """
    open_at = text.find(_THINK_OPEN)
    close_at = text.find(_THINK_CLOSE)
    if open_at == -1 and close_at == -1:
        return None, text
    if open_at != -1 and (close_at == -1 or open_at < close_at):
        before = text[:open_at]
        rest = text[open_at + len(_THINK_OPEN) :]
        close_rel = rest.find(_THINK_CLOSE)
        if close_rel == -1:
            return rest, before
        return rest[:close_rel], before + rest[close_rel + len(_THINK_CLOSE) :].lstrip("\n")
    return text[:close_at], text[close_at + len(_THINK_CLOSE) :].lstrip("\n")


def _token_id(token: str, explicit: Any) -> int | None:
    if isinstance(explicit, int):
        return explicit
    if token.startswith(_TOKEN_ID_PREFIX):
        try:
            return int(token[len(_TOKEN_ID_PREFIX) :])
        except ValueError:
            return None
    return None


def parse_logprobs(raw: Any) -> list[TokenLogprob] | None:
    """Parse either logprob shape into a list of :class:`TokenLogprob` (None when absent)."""
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise MalformedResponse(f"logprobs must be an object, got {type(raw).__name__}")
    content = raw.get("content")
    if content is not None:
        return [_parse_chat_logprob(item) for item in content]
    tokens = raw.get("tokens")
    if tokens is None:
        return None
    token_logprobs: Sequence[Any] = raw.get("token_logprobs") or []
    top_list: Sequence[Any] = raw.get("top_logprobs") or []
    if len(token_logprobs) != len(tokens):
        raise MalformedResponse("legacy logprobs: 'tokens' and 'token_logprobs' differ in length")
    parsed = []
    try:
        for i, (token, logprob) in enumerate(zip(tokens, token_logprobs, strict=True)):
            alternatives = top_list[i] if i < len(top_list) and top_list[i] else {}
            top = tuple((str(t), _as_float(lp)) for t, lp in alternatives.items())
            parsed.append(TokenLogprob(token, _as_float(logprob), _token_id(token, None), top))
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedResponse(f"malformed legacy logprobs: {exc}") from exc
    return parsed


def _parse_chat_logprob(item: Mapping[str, Any]) -> TokenLogprob:
    try:
        token = str(item["token"])
        top = tuple((str(t["token"]), _as_float(t["logprob"])) for t in item.get("top_logprobs") or ())
        return TokenLogprob(token, _as_float(item["logprob"]), _token_id(token, item.get("id")), top)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MalformedResponse(f"malformed logprob entry {item!r}: {exc}") from exc


def _as_float(value: Any) -> float:
    # Some servers send null for the first token or -inf as a string; neither is a real number.
    if value is None:
        return float("-inf")
    return float(value)


def parse_usage(raw: Any) -> Usage | None:
    if not raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_prompt_tokens=int(cached) if cached is not None else None,
    )


@dataclass(slots=True)
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    usage_completion_tokens: int | None = None
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> id, type, name, arguments
    has_body: bool = False  # a message/delta (chat) or text (completions) field was seen


class ChoiceAccumulator:
    """Collects choices from streamed chunks or whole responses, then builds :class:`Choice` objects."""

    def __init__(self, *, chat: bool) -> None:
        self._chat = chat
        self._states: dict[int, _ChoiceState] = {}
        self.usage: Usage | None = None
        self.model: str = ""
        self.prompt_token_ids: list[int] | None = None
        self.got_content = False

    def add(self, body: Mapping[str, Any]) -> None:
        """Fold one response body or stream chunk in (MalformedResponse if it has the wrong shape)."""
        if not isinstance(body, Mapping) or "choices" not in body:
            raise MalformedResponse(f"response has no 'choices': {str(body)[:200]!r}")
        try:
            self._add(body)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # JSON of the wrong shape (a string where an object belongs, "abc" as a count, ...).
            raise MalformedResponse(f"malformed response ({exc}): {str(body)[:200]!r}") from exc

    def _add(self, body: Mapping[str, Any]) -> None:
        self.model = str(body.get("model") or self.model)
        if body.get("prompt_token_ids"):
            self.prompt_token_ids = [int(t) for t in body["prompt_token_ids"]]
        usage = parse_usage(body.get("usage"))
        choices = body["choices"] or []
        if usage is not None:
            # llama.cpp streams a usage object per choice (on its last chunk); others one at the end.
            if len(choices) == 1 and choices[0].get("finish_reason"):
                self._state(int(choices[0].get("index", 0))).usage_completion_tokens = usage.completion_tokens
            self.usage = usage
        for raw in choices:
            self._add_choice(raw)

    def _state(self, index: int) -> _ChoiceState:
        return self._states.setdefault(index, _ChoiceState())

    def _add_choice(self, raw: Mapping[str, Any]) -> None:
        state = self._state(int(raw.get("index", 0)))
        if self._chat:
            state.has_body |= isinstance(raw.get("message"), Mapping) or isinstance(raw.get("delta"), Mapping)
        else:
            state.has_body |= isinstance(raw.get("text"), str)
        part = (raw.get("message") or raw.get("delta") or {}) if self._chat else raw
        text = part.get("content") if self._chat else part.get("text")
        reasoning = part.get("reasoning_content") or part.get("reasoning")
        if text:
            state.text.append(str(text))
            self.got_content = True
        if reasoning:
            state.reasoning.append(str(reasoning))
            self.got_content = True
        if self._chat and part.get("tool_calls"):
            _add_tool_calls(state.tool_calls, part["tool_calls"])
            self.got_content = True
        logprobs = parse_logprobs(raw.get("logprobs"))
        if logprobs:
            state.logprobs = (state.logprobs or []) + logprobs
        if raw.get("token_ids"):
            state.token_ids = (state.token_ids or []) + [int(t) for t in raw["token_ids"]]
        if raw.get("finish_reason"):
            state.finish_reason = str(raw["finish_reason"])

    def build(self, *, n_requested: int, keep_logprobs: bool, index_offset: int = 0) -> list[Choice]:
        """Build the choices; counts come from token ids, logprobs, or (n == 1 only) usage."""
        if len(self._states) != n_requested:
            raise MalformedResponse(f"asked for {n_requested} choices, server returned {len(self._states)}")
        choices = []
        for index in sorted(self._states):
            state = self._states[index]
            if not state.has_body:
                field_name = "a 'message' or 'delta' object" if self._chat else "a 'text' string"
                raise MalformedResponse(f"choice {index} has no {field_name}: not an answer")
            raw_text = "".join(state.text)
            field_reasoning = "".join(state.reasoning) or None
            inline_reasoning, text = split_reasoning(raw_text)
            reasoning = field_reasoning if field_reasoning is not None else inline_reasoning
            token_ids = state.token_ids
            if token_ids is None and state.logprobs and all(lp.token_id is not None for lp in state.logprobs):
                token_ids = [lp.token_id for lp in state.logprobs if lp.token_id is not None]
            choices.append(
                Choice(
                    index=index + index_offset,
                    text=text,
                    num_tokens=self._count(state, n_requested),
                    finish_reason=state.finish_reason,
                    reasoning=reasoning,
                    logprobs=tuple(state.logprobs) if keep_logprobs and state.logprobs is not None else None,
                    token_ids=tuple(token_ids) if token_ids is not None else None,
                    raw_text=raw_text,
                    tool_calls=tuple(
                        ToolCall(c["name"], c["arguments"], c["id"] or None, c["type"] or "function")
                        for _, c in sorted(state.tool_calls.items())
                    ),
                )
            )
        return choices

    def _count(self, state: _ChoiceState, n_requested: int) -> int:
        if state.token_ids is not None:
            return len(state.token_ids)
        if state.logprobs is not None:
            return len(state.logprobs)
        if state.usage_completion_tokens is not None:
            return state.usage_completion_tokens
        if n_requested == 1 and self.usage is not None:
            return self.usage.completion_tokens
        if not "".join(state.text) and not state.reasoning and not state.tool_calls:
            return 0
        raise MalformedResponse(
            "cannot count this choice's tokens: the server returned neither logprobs, token ids nor "
            "usage for it"
        )


def _add_tool_calls(calls: dict[int, dict[str, str]], raw: Sequence[Mapping[str, Any]]) -> None:
    """Fold a message's ``tool_calls`` (whole, or a stream delta's pieces) into ``calls`` by index."""
    for position, item in enumerate(raw):
        index = int(item.get("index", position))
        call = calls.setdefault(index, {"id": "", "type": "", "name": "", "arguments": ""})
        function = item.get("function") or {}
        call["id"] = call["id"] or str(item.get("id") or "")
        call["type"] = call["type"] or str(item.get("type") or "")
        call["name"] = call["name"] or str(function.get("name") or "")
        call["arguments"] += str(function.get("arguments") or "")
