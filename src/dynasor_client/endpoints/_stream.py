"""Watching one trace as it streams: token by token, closable mid-stream, every token counted.

::

    async with endpoint.watch(prompt, params=params, max_tokens=4096, top_logprobs=5,
                              monitor=lowest_group_confidence_below(17.0, group=2048)) as trace:
        async for piece in trace:          # Piece: new text, its TokenLogprobs (top-k), token ids
            if "Wait" in piece.text:
                await trace.close("wait")  # closes the HTTP stream: the server aborts the request
    trace.stop_reason, trace.generated_tokens, trace.usage

- **Pieces** are what each stream chunk added: text (and a reasoning field's text), the
  :class:`TokenLogprob` of each token with its top-k alternatives where the request asked for
  ``top_logprobs`` (both shapes: vLLM/OpenAI's ``logprobs.content`` in chat and the legacy arrays
  on ``/v1/completions``; llama.cpp's ``content`` shape on both routes, with token ids), and the
  generated token ids where the server gives them (llama.cpp: from logprobs; vLLM:
  ``return_token_ids``). Ids (or one logprob per token) are always asked for, so that a trace
  closed mid-stream is counted token for token.
- **Closing**: :meth:`Trace.close` (from the loop body or another task), a monitor firing
  (:mod:`._monitor`), leaving the ``async with`` before the stream ended, or cancelling the task
  (a deadline) all close the HTTP response, which makes llama.cpp, vLLM and SGLang abort it.
- **Counting**: when the trace ends, however it ends, :attr:`Trace.usage` holds what it cost: the
  server's ``usage`` when it reported one (the stream ran to its end), else the tokens streamed
  (one per logprob entry or token id; the text's estimate where a chunk has neither) and the
  prompt's estimate. Bill it: :meth:`~dynasor_client.program.ProgramContext.watch_trace` does, as
  its ``TokenKind``, also when the trace was cancelled.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._exceptions import BadRequest, EndpointError
from .._log import program_id_var, request_scope
from ._endpoint import _SDK_FIELDS, Endpoint, _body_prompt_estimate, _Call, sampling
from ._errors import translate
from ._meter import estimate_tokens
from ._monitor import Monitor
from ._parse import parse_logprobs, parse_usage, split_reasoning
from ._types import Choice, Generation, Kind, Message, Prompt, SamplingParams, TokenLogprob, Usage


@dataclass(frozen=True, slots=True)
class Piece:
    """What one stream chunk added to a trace."""

    text: str
    reasoning: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    token_ids: tuple[int, ...] = ()
    num_tokens: int = 0


def token_confidence(logprob: TokenLogprob) -> float:
    """DeepConf's token confidence: minus the mean of the top-k logprobs (NaN without top-k).

    Non-finite alternatives (a server's ``-inf``) are left out of the mean."""
    values = [lp for _, lp in logprob.top if math.isfinite(lp)]
    return -sum(values) / len(values) if values else math.nan


class Trace:
    """One generation as it streams (module docs). Iterate it for :class:`Piece` objects.

    State, updated as pieces arrive: ``text`` (content as generated, think tags inline),
    ``reasoning`` (a separate reasoning field's text, or None), ``logprobs``, ``token_ids``,
    ``token_confidences``, ``num_tokens`` (streamed), ``finish_reason`` (the server's, when it ran
    to its end), ``stop_reason`` (why it was closed early: a monitor's reason or ``close``'s).
    When it has ended: ``usage`` and ``generated_tokens`` (module docs, *Counting*).
    """

    def __init__(self, where: str, prompt_tokens: int, monitor: Monitor | None) -> None:
        self.where = where
        self.monitor = monitor
        self.request_id: str | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.token_ids: list[int] = []
        self.token_confidences: list[float] = []
        self._conf_sums = [0.0]  # prefix sums of the finite token confidences
        self.num_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.server_usage: Usage | None = None
        self.ttft_s: float | None = None
        self.latency_s: float | None = None
        self._prompt_tokens = prompt_tokens
        self._started = time.perf_counter()
        self._events: AsyncGenerator[dict[str, Any], None] | None = None
        self._stream: Any = None  # the SDK stream, closed under a reader in another task
        self.ended = False
        self._reading = False

    # ---------------------------------------------------------------- state

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def reasoning(self) -> str | None:
        return "".join(self._reasoning) if self._reasoning else split_reasoning(self.text)[0]

    @property
    def answer(self) -> str:
        return split_reasoning(self.text)[1]

    @property
    def finished(self) -> bool:
        """The model stopped on its own (not cut by ``max_tokens``, not closed)."""
        return self.stop_reason is None and self.finish_reason not in (None, "length")

    @property
    def stopped(self) -> bool:
        """Closed before the server ended it."""
        return self.stop_reason is not None

    @property
    def generated_tokens(self) -> int:
        """Tokens generated: the server's count when it reported one, else those streamed."""
        if self.server_usage is not None and self.stop_reason is None:
            return max(self.server_usage.completion_tokens, self.num_tokens)
        return self.num_tokens

    @property
    def usage(self) -> Usage:
        """What the trace cost so far (final once it :attr:`ended`)."""
        server = self.server_usage
        return Usage(
            server.prompt_tokens if server is not None and server.prompt_tokens else self._prompt_tokens,
            self.generated_tokens,
            server.cached_prompt_tokens if server is not None else None,
        )

    def group_confidence(self, group: int, *, full: bool = False) -> float | None:
        """Mean token confidence of the newest ``group`` tokens with top-k logprobs (all of them
        when fewer; None when ``full`` and fewer, or when there are none)."""
        sums = self._conf_sums
        have = len(sums) - 1
        if have == 0 or (full and have < group):
            return None
        size = min(group, have)
        return (sums[-1] - sums[-1 - size]) / size

    # ---------------------------------------------------------------- streaming

    async def __aiter__(self) -> AsyncIterator[Piece]:
        events = self._events
        if events is None or self.ended:
            return
        try:
            while True:
                self._reading = True
                try:
                    chunk = await anext(events)
                except StopAsyncIteration:
                    break
                finally:
                    self._reading = False
                piece = self._fold(chunk)
                if piece is None:
                    continue
                if self.monitor is not None and (reason := self.monitor.fired(self)) is not None:
                    await self.close(reason)
                yield piece
                if self.ended:
                    return
        except EndpointError:
            if self.stop_reason is None:  # else closed under us from another task: that is the end
                raise
        self._end()

    def generation(self, model: str = "") -> Generation:
        """What streamed so far as one :class:`Generation` of one choice (the form every other
        request returns; ``finish_reason`` None when it was closed before the server ended it)."""
        reasoning, answer = split_reasoning(self.text)
        choice = Choice(
            index=0,
            text=answer,
            num_tokens=self.num_tokens,
            finish_reason=self.finish_reason,
            reasoning="".join(self._reasoning) if self._reasoning else reasoning,
            logprobs=tuple(self.logprobs) or None,
            token_ids=tuple(self.token_ids) or None,
            raw_text=self.text,
        )
        latency = self.latency_s if self.latency_s is not None else time.perf_counter() - self._started
        return Generation((choice,), self.usage, model, self.request_id or "", latency, self.ttft_s)

    async def close(self, reason: str = "closed") -> None:
        """Close the stream now (the server aborts the request); ``stop_reason`` becomes ``reason``.
        Safe to call from the loop body, from another task, and more than once."""
        if self.ended:
            return
        self.stop_reason = reason
        self._end()
        events = self._events
        if events is None:
            return
        if self._reading:  # being read in another task: close the connection under it
            await self._stream.close()
        else:
            await events.aclose()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.latency_s = time.perf_counter() - self._started

    def _fold(self, chunk: Mapping[str, Any]) -> Piece | None:
        if (usage := parse_usage(chunk.get("usage"))) is not None:
            self.server_usage = usage
        choices = chunk.get("choices") or ()
        if not choices:
            return None
        raw = choices[0]
        part = raw.get("delta") or raw.get("message") or raw
        text = str(part.get("content") or part.get("text") or "")
        reasoning = str(part.get("reasoning_content") or part.get("reasoning") or "")
        logprobs = tuple(parse_logprobs(raw.get("logprobs")) or ())
        ids = tuple(int(t) for t in raw.get("token_ids") or ())
        if not ids and logprobs and all(lp.token_id is not None for lp in logprobs):
            ids = tuple(lp.token_id for lp in logprobs if lp.token_id is not None)
        if raw.get("finish_reason"):
            self.finish_reason = str(raw["finish_reason"])
        if not (text or reasoning or logprobs or ids):
            return None
        count = len(logprobs) or len(ids) or max(1, estimate_tokens(text + reasoning))
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self._started
        self._text.append(text)
        if reasoning:
            self._reasoning.append(reasoning)
        self.logprobs.extend(logprobs)
        self.token_ids.extend(ids)
        for lp in logprobs:
            conf = token_confidence(lp)
            self.token_confidences.append(conf)
            if not math.isnan(conf):
                self._conf_sums.append(self._conf_sums[-1] + conf)
        self.num_tokens += count
        return Piece(text, reasoning, logprobs, ids, count)


@contextlib.asynccontextmanager
async def watch(
    endpoint: Endpoint,
    prompt: Prompt | None = None,
    *,
    messages: Sequence[Message] | None = None,
    params: SamplingParams | None = None,
    monitor: Monitor | None = None,
    **overrides: Any,
) -> AsyncIterator[Trace]:
    """Stream one generation of ``prompt`` (completions) or ``messages`` (chat) as a :class:`Trace`
    (module docs). The request is sent on entering; leaving closes it if it still streams."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt= or messages=")
    params = sampling(params, overrides)
    if monitor is not None and monitor.needs_top_logprobs and params.top_logprobs < 1:
        raise ValueError(f"{monitor!r} reads token confidences: ask for top_logprobs >= 1")
    kind: Kind = "chat" if messages is not None else "completions"
    if messages is not None:
        if not messages:
            raise ValueError("chat needs at least one message")
        payload: dict[str, Any] = {"messages": [dict(m) for m in messages]}
    else:
        assert prompt is not None
        if not prompt:
            raise ValueError("prompt is empty")
        payload = {"prompt": prompt if isinstance(prompt, str) else list(prompt)}
    caps = await endpoint.capabilities()
    # Token ids (or a logprob per token) are always asked for: they count a closed trace exactly.
    call = _Call(kind, payload, params, True, True)
    body = {**payload, **endpoint._sampling_body(call, 1, params, caps), "n": 1}
    if caps.streaming_usage:
        body["stream_options"] = {"include_usage": True}
    where = f"{endpoint.name} {'chat/completions' if kind == 'chat' else 'completions'} (watched)"
    trace = Trace(where, _body_prompt_estimate(body), monitor)
    endpoint.outstanding += 1  # read by EndpointPool's least-outstanding routing
    try:
        async with endpoint._slot():
            with request_scope() as rid:
                trace.request_id = rid
                stream = await endpoint.retry.call(
                    lambda: _open(endpoint, kind, body, rid, where), what=where
                )
            trace._stream = stream
            trace._events = _events(stream, where, rid)
            try:
                yield trace
            finally:
                if not trace.ended:
                    trace.stop_reason = trace.stop_reason or "closed"
                trace._end()
                await trace._events.aclose()
    finally:
        endpoint.outstanding -= 1


async def _open(endpoint: Endpoint, kind: Kind, body: dict[str, Any], rid: str, where: str) -> Any:
    """Send the request; the SDK's stream once the server answered with its headers."""
    try:
        model = await endpoint._model_once()
        args = {k: v for k, v in body.items() if k in _SDK_FIELDS}
        extra = {k: v for k, v in body.items() if k not in _SDK_FIELDS}
        headers = {"X-Request-Id": rid}
        if program := program_id_var.get():
            headers["X-Program-Id"] = program
        client = endpoint._client
        resource: Any = client.chat.completions if kind == "chat" else client.completions
        return await resource.create(
            model=model, stream=True, extra_body=extra or None, extra_headers=headers, **args
        )
    except EndpointError:
        raise
    except Exception as exc:
        raise translate(exc, where=where, request_id=rid) from exc


async def _events(stream: Any, where: str, rid: str) -> AsyncGenerator[dict[str, Any], None]:
    """The stream's chunks as dicts, errors translated; closing it closes the HTTP response."""
    try:
        async for chunk in stream:
            yield chunk.model_dump(exclude_unset=True)
    except Exception as exc:
        raise translate(exc, where=where, request_id=rid) from exc
    finally:
        await stream.close()


def check_streamable(mode: str) -> None:
    """BadRequest for a continuation a watched trace cannot follow."""
    if mode == "prefill":
        raise BadRequest("a watched trace continues a trajectory in 'tokens' or 'text' mode, not 'prefill'")
