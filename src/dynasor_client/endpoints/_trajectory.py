"""Chunked generation: grow one sample k tokens at a time, any number of times.

A :class:`Trajectory` is one sample in progress. Each :meth:`Trajectory.extend` sends the prompt plus
everything generated so far and appends what comes back. How "plus everything so far" is sent is a
:class:`Continuation` strategy, chosen per server:

- ``tokens`` — the prompt and the generated text as token ids (``/v1/completions`` with a list of
  ints; vLLM and llama.cpp accept it). Nothing is re-tokenised, so the chunked sample is token for
  token the sample one long request would have produced, and token counts add up exactly.
- ``text`` — prompt text plus generated text. The server re-tokenises the joined text, and at a chunk
  boundary it may merge or split tokens differently from how they were generated: counts then add up
  to within **one token per chunk boundary** (and the continuation can drift from the one-shot sample).
- ``prefill`` — chat models through ``/v1/chat/completions`` with the text so far as a trailing
  assistant message (llama.cpp; vLLM with ``continue_final_message``); same tolerance as ``text``.

Chat messages otherwise go through the server's chat template (``Endpoint.render_chat``) and then
continue as ``tokens`` or ``text`` on the completions endpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._exceptions import BadRequest
from .._log import get_logger
from ._endpoint import Endpoint, sampling
from ._meter import estimate_tokens, prompt_estimate
from ._parse import split_reasoning
from ._types import Choice, Message, Prompt, SamplingParams, Usage

if TYPE_CHECKING:
    from ._monitor import Monitor
    from ._stream import Trace

log = get_logger("dynasor_client.endpoints")

ContinuationMode = Literal["auto", "tokens", "text", "prefill"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one :meth:`Trajectory.extend` added."""

    text: str
    num_tokens: int
    finish_reason: str | None
    usage: Usage
    choice: Choice


class Continuation(Protocol):
    """How a trajectory's next chunk is requested (see the module docs for the strategies)."""

    mode: ContinuationMode

    async def next(
        self, endpoint: Endpoint, state: Trajectory, n: int, params: SamplingParams
    ) -> tuple[list[Choice], Usage]: ...


@dataclass(slots=True)
class TokenContinuation:
    prompt_ids: list[int]
    mode: ContinuationMode = "tokens"

    async def next(
        self, endpoint: Endpoint, state: Trajectory, n: int, params: SamplingParams
    ) -> tuple[list[Choice], Usage]:
        generation = await endpoint.complete(
            self.prompt_ids + state.token_ids, n=n, params=params, token_ids=True
        )
        for choice in generation.choices:
            if choice.token_ids is None:
                raise BadRequest(f"{endpoint.name} did not return generated token ids; use mode='text'")
        return list(generation.choices), generation.usage


@dataclass(slots=True)
class TextContinuation:
    prompt: str
    mode: ContinuationMode = "text"

    async def next(
        self, endpoint: Endpoint, state: Trajectory, n: int, params: SamplingParams
    ) -> tuple[list[Choice], Usage]:
        generation = await endpoint.complete(self.prompt + state.text, n=n, params=params)
        return list(generation.choices), generation.usage


@dataclass(slots=True)
class PrefillContinuation:
    messages: list[dict[str, object]]
    echoes: bool
    mode: ContinuationMode = "prefill"

    async def next(
        self, endpoint: Endpoint, state: Trajectory, n: int, params: SamplingParams
    ) -> tuple[list[Choice], Usage]:
        messages = list(self.messages)
        if state.text:
            messages.append({"role": "assistant", "content": state.text})
            extra = {**params.extra_body, "continue_final_message": True, "add_generation_prompt": False}
            params = sampling(params, {"extra_body": extra})
        generation = await endpoint.chat(messages, n=n, params=params)
        choices = []
        for choice in generation.choices:
            raw = choice.raw_text
            if state.text and self.echoes:
                if raw.startswith(state.text):
                    raw = raw[len(state.text) :]
                else:
                    log.warning("prefill echo does not start with the prefix; keeping the whole reply")
            choices.append(_with_raw(choice, raw))
        return choices, generation.usage


def _with_raw(choice: Choice, raw: str) -> Choice:
    reasoning, text = split_reasoning(raw)
    return Choice(
        index=choice.index,
        text=text,
        num_tokens=choice.num_tokens,
        finish_reason=choice.finish_reason,
        reasoning=reasoning if choice.reasoning is None else choice.reasoning,
        logprobs=choice.logprobs,
        token_ids=choice.token_ids,
        raw_text=raw,
    )


@dataclass(slots=True)
class Trajectory:
    """One sample generated chunk by chunk. Create with :func:`start_trajectories` or :meth:`start`.

    ``text`` is everything generated so far (think tags included), ``answer``/``reasoning`` its two
    parts, ``num_tokens`` the sum of the chunks' counts, ``finish_reason`` that of the last chunk.
    ``finished`` is true once the model stopped on its own (not merely hit a chunk's ``max_tokens``).
    """

    endpoint: Endpoint
    continuation: Continuation
    params: SamplingParams = field(default_factory=SamplingParams)
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    chunks: int = 0

    @property
    def mode(self) -> ContinuationMode:
        return self.continuation.mode

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def answer(self) -> str:
        return split_reasoning(self.text)[1]

    @property
    def reasoning(self) -> str | None:
        return split_reasoning(self.text)[0]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None and self.finish_reason != "length"

    @classmethod
    async def start(
        cls,
        endpoint: Endpoint,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        mode: ContinuationMode = "auto",
        params: SamplingParams | None = None,
    ) -> Trajectory:
        """An empty trajectory for ``prompt`` (completions) or ``messages`` (chat); nothing is sent yet."""
        continuation = await choose_continuation(endpoint, prompt, messages, mode)
        return cls(endpoint, continuation, params or SamplingParams())

    def fork(self) -> Trajectory:
        """An independent copy sharing the history so far (for tree search)."""
        return Trajectory(
            self.endpoint,
            self.continuation,
            self.params,
            list(self.pieces),
            list(self.token_ids),
            self.num_tokens,
            self.finish_reason,
            self.usage,
            self.chunks,
        )

    def prompt_estimate(self, suffix: str = "") -> int:
        """The estimated prompt tokens of this sample's next request (its prompt, the text so far
        and ``suffix``): what a budget reserves for it (:func:`~._meter.prompt_estimate`)."""
        cont = self.continuation
        if isinstance(cont, TokenContinuation):
            return len(cont.prompt_ids) + len(self.token_ids) + estimate_tokens(suffix)
        if isinstance(cont, TextContinuation):
            return estimate_tokens(cont.prompt + self.text + suffix)
        if isinstance(cont, PrefillContinuation):
            tail = self.text + suffix
            extra = [{"role": "assistant", "content": tail}] if tail else []
            return prompt_estimate(None, [*cont.messages, *extra])
        return 0

    async def extend(self, max_tokens: int, **overrides: object) -> Chunk:
        """Generate up to ``max_tokens`` more tokens of this sample and append them."""
        return (await self._extend_many(1, max_tokens, overrides))[0][1]

    @contextlib.asynccontextmanager
    async def watch(
        self, max_tokens: int, *, monitor: Monitor | None = None, **overrides: Any
    ) -> AsyncIterator[Trace]:
        """Stream up to ``max_tokens`` more tokens of this sample as one watched
        :class:`~._stream.Trace` (``tokens`` or ``text`` continuation). Whatever streamed, to its end
        or to where it was closed, is appended as one chunk on leaving (``finish_reason`` None when
        closed early: the sample can be extended further from exactly there)."""
        from ._stream import check_streamable

        if self.finished:
            raise ValueError("this trajectory has finished; fork it or start a new one")
        check_streamable(self.mode)
        cont = self.continuation
        by_tokens = isinstance(cont, TokenContinuation)
        if isinstance(cont, TokenContinuation):
            prompt: Prompt = cont.prompt_ids + self.token_ids
        else:
            assert isinstance(cont, TextContinuation)
            prompt = cont.prompt + self.text
        params = sampling(self.params, {**overrides, "max_tokens": max_tokens})
        trace: Trace | None = None
        try:
            async with self.endpoint.watch(prompt, params=params, monitor=monitor) as trace:
                yield trace
        finally:
            if trace is not None:
                if by_tokens and len(trace.token_ids) != trace.num_tokens:
                    log.warning(
                        "%s: %d token ids for %d streamed tokens",
                        trace.where,
                        len(trace.token_ids),
                        trace.num_tokens,
                    )
                finish = None if trace.stopped else trace.finish_reason
                raw = trace.text
                reasoning, text = split_reasoning(raw)
                choice = Choice(
                    0,
                    text,
                    trace.generated_tokens,
                    finish,
                    reasoning,
                    tuple(trace.logprobs) or None,
                    tuple(trace.token_ids) if by_tokens else None,
                    raw,
                )
                self._append(Chunk(raw, trace.generated_tokens, finish, trace.usage, choice))

    async def _extend_many(
        self, n: int, max_tokens: int, overrides: dict[str, object]
    ) -> list[tuple[Trajectory, Chunk]]:
        if self.finished:
            raise ValueError("this trajectory has finished; fork it or start a new one")
        params = sampling(self.params, {**overrides, "max_tokens": max_tokens})
        choices, usage = await self.continuation.next(self.endpoint, self, n, params)
        out = []
        for i, choice in enumerate(choices):
            target = self if n == 1 else self.fork()
            share = usage if i == 0 else Usage()  # prompt tokens were paid once for all n
            chunk = Chunk(choice.raw_text, choice.num_tokens, choice.finish_reason, share, choice)
            target._append(chunk)
            out.append((target, chunk))
        return out

    def _append(self, chunk: Chunk) -> None:
        self.pieces.append(chunk.text)
        if chunk.choice.token_ids is not None:
            self.token_ids.extend(chunk.choice.token_ids)
        self.num_tokens += chunk.num_tokens
        self.finish_reason = chunk.finish_reason
        self.usage = self.usage + Usage(
            chunk.usage.prompt_tokens, chunk.num_tokens, chunk.usage.cached_prompt_tokens
        )
        self.chunks += 1


async def start_trajectories(
    endpoint: Endpoint,
    prompt: Prompt | None = None,
    *,
    messages: Sequence[Message] | None = None,
    n: int = 1,
    max_tokens: int,
    mode: ContinuationMode = "auto",
    params: SamplingParams | None = None,
) -> list[Trajectory]:
    """Sample the first chunk of ``n`` trajectories in one request; extend each one independently."""
    root = await Trajectory.start(endpoint, prompt, messages=messages, mode=mode, params=params)
    return [t for t, _ in await root._extend_many(n, max_tokens, {})]


async def choose_continuation(
    endpoint: Endpoint,
    prompt: Prompt | None,
    messages: Sequence[Message] | None,
    mode: ContinuationMode,
) -> Continuation:
    """Pick the continuation strategy for this server (``auto``: the most exact one it supports)."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt= or messages=")
    caps = await endpoint.capabilities()
    if messages is not None:
        if mode == "prefill" or (mode == "auto" and caps.chat_template is None):
            if not caps.assistant_prefill and mode == "auto":
                raise BadRequest(
                    f"{endpoint.name} can neither render chat templates nor continue an assistant message; "
                    "render the chat template yourself and pass prompt="
                )
            return PrefillContinuation([dict(m) for m in messages], caps.prefill_echoes)
        prompt = await endpoint.render_chat(messages)
    assert prompt is not None
    if mode == "prefill":
        raise ValueError("mode='prefill' needs messages=")
    if mode == "tokens" or (mode == "auto" and caps.token_exact_continuation):
        if not caps.token_id_prompts:
            raise BadRequest(f"{endpoint.name} does not accept token-id prompts; use mode='text'")
        ids = list(prompt) if not isinstance(prompt, str) else await endpoint.tokenize(prompt)
        return TokenContinuation(ids)
    if not isinstance(prompt, str):
        raise ValueError("text continuation needs a text prompt")
    return TextContinuation(prompt)
