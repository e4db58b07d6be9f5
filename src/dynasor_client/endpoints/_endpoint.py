"""The endpoint: one async interface over an OpenAI-compatible server (the only code speaking HTTP).

Requests go through the official ``openai`` SDK (its own retries off: retries happen once, here).
Per logical request the endpoint plans the HTTP requests it takes (n above the server's limit, or
seeded n on a server that would repeat one sample, becomes several), runs each under the retry
policy, a requests-per-second throttle and a bound on requests in flight, and merges the answers
into one normalised :class:`Generation`. Cancelling the awaiting task closes the connection, which
makes llama.cpp, vLLM and SGLang abort the request.

Long because it is one job, the one class that speaks HTTP: planning, retrying, streaming and
merging a request belong together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
import openai
from asyncio_throttle.throttler import Throttler

from .._exceptions import BadRequest, EndpointError, EndpointUnavailable, MalformedResponse
from .._log import get_logger, new_id, program_id_var, request_id_var, request_scope
from ._capabilities import Capabilities, Reprobe, probe
from ._errors import n_limit_from, translate
from ._meter import meter_var, prompt_estimate
from ._parse import ChoiceAccumulator
from ._retry import RetryPolicy
from ._types import Generation, Kind, Message, Prompt, SamplingParams, Usage

if TYPE_CHECKING:
    from ._monitor import Monitor
    from ._stream import Trace

log = get_logger("dynasor_client.endpoints")

_SAMPLING_FIELDS = frozenset(SamplingParams.__dataclass_fields__)
#: Body fields passed to the SDK as its own arguments (the rest go through ``extra_body``).
_SDK_FIELDS = frozenset({
    "model", "messages", "prompt", "n", "max_tokens", "temperature", "top_p", "seed", "stop",
    "logprobs", "top_logprobs", "stream_options",
})  # fmt: skip


def sampling(params: SamplingParams | None, overrides: Mapping[str, Any]) -> SamplingParams:
    """``params`` with keyword overrides applied (``complete(p, max_tokens=8)`` style)."""
    if not overrides and params is not None:
        return params  # frozen: nothing to copy
    unknown = set(overrides) - _SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling argument(s) {sorted(unknown)}; use extra_body for server extras")
    if "stop" in overrides and overrides["stop"] is not None:
        stop = overrides["stop"]
        overrides = {**overrides, "stop": (stop,) if isinstance(stop, str) else tuple(stop)}
    return replace(params or SamplingParams(), **overrides)


class Endpoint:
    """An OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted API).

    Args:
        base_url: the API root including ``/v1``, e.g. ``http://127.0.0.1:8000/v1``; by default
            ``OPENAI_BASE_URL`` (as the ``openai`` SDK reads it). Neither: a ``ValueError`` saying so.
        model: model name; by default the first one ``/v1/models`` lists.
        api_key: the key; by default ``OPENAI_API_KEY``, else a placeholder (local servers).
            It is sent as a bearer token and never logged or shown in ``repr``.
        timeout: seconds to wait for a connection and for each read.
        retry: the retry policy (:class:`RetryPolicy`).
        max_in_flight: most HTTP requests in flight at once.
        requests_per_second: throttle on starting requests (None: unthrottled).
        capabilities: ``"detect"`` (probe the server on first use) or a :class:`Capabilities`
            (no probing: use for hosted APIs, where probes cost money). Only a detection that got
            its answers is kept: one that failed because the server could not be reached, timed
            out or answered 5xx/429 is tried again on a later use, not sooner than
            ``reprobe_after_s`` after the failure, the wait doubling with each failure up to 30 s
            (meanwhile: the capabilities learnt so far, or, when nothing answered at all,
            :class:`EndpointUnavailable` at once).
        name: a label for logs (default: the URL).
        stream: stream responses by default (per call: ``stream=``). Streaming is what lets a
            cancelled request stop the server's work: llama.cpp finishes a non-streaming request even
            after its client has gone. It also measures time to first token.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_in_flight: int = 64,
        requests_per_second: float | None = None,
        capabilities: Capabilities | Literal["detect"] = "detect",
        name: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        stream: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        reprobe_after_s: float = 2.0,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError(
                "no endpoint URL: pass one, Endpoint('http://127.0.0.1:8000/v1'), or set OPENAI_BASE_URL"
            )
        check_url(base_url)
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second must be > 0")
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.name = name or self.base_url
        self.timeout = timeout
        self.stream = stream
        self.retry = retry or RetryPolicy()
        self._model = model
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._headers = {"Authorization": f"Bearer {key}", **(default_headers or {})}
        self._transport = transport
        # openai>=3 types its client as httpx2's but accepts an httpx one as well.
        http_client: Any = (
            None if transport is None else httpx.AsyncClient(transport=transport, timeout=timeout)
        )
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key,
            max_retries=0,
            timeout=timeout,
            default_headers=dict(default_headers or {}),
            http_client=http_client,
        )
        self._http: httpx.AsyncClient | None = None
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._throttler = _throttler(requests_per_second) if requests_per_second else None
        self._caps: Capabilities | None = None if capabilities == "detect" else capabilities
        self._caps_lock = asyncio.Lock()
        self._reprobe = Reprobe(first_s=reprobe_after_s, max_s=max(reprobe_after_s, 30.0))
        self.outstanding = 0  # logical requests running now (read by EndpointPool)

    def __repr__(self) -> str:
        return f"Endpoint({self.base_url!r}, model={self._model!r})"

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------------ discovery

    async def model_name(self) -> str:
        """The model to ask for: the one given, else the first listed by ``/v1/models`` (cached)."""
        if self._model is None:
            await self.retry.call(self._model_once, what="GET /v1/models")
        assert self._model is not None
        return self._model

    async def _model_once(self) -> str:
        """:meth:`model_name` in one HTTP request (no retries: its callers retry whole requests)."""
        if self._model is None:
            listing = await self._guard(self._client.models.list(), "GET /v1/models")
            if not listing.data:
                raise MalformedResponse(f"{self.name}: /v1/models lists no model; pass model=")
            self._model = listing.data[0].id
        return self._model

    async def capabilities(self) -> Capabilities:
        """The server's capabilities, probed on first use (see :class:`Capabilities`).

        A detection that got its answers is cached for good; one that failed for a transient reason
        (see ``capabilities=`` of the class) is retried on a later use after a doubling backoff.
        """
        if self._caps is not None:
            return self._caps
        async with self._caps_lock:
            if self._caps is not None:
                return self._caps
            reprobe = self._reprobe
            if not reprobe.due(time.monotonic()):
                if reprobe.provisional is not None:
                    return reprobe.provisional
                raise EndpointUnavailable(
                    f"{self.name}: the server could not be reached when its capabilities were probed "
                    f"({reprobe.error}); probing again in {reprobe.wait_s(time.monotonic()):.1f}s"
                )
            detection = await probe(self)
            if detection.error is None:
                self._caps = detection.capabilities
                reprobe.succeeded()
                return self._caps
            delay = reprobe.failed(time.monotonic(), detection)
            log.warning(
                "%s: capability detection failed (%s); %s; probing again in %.1fs at the earliest",
                self.name,
                detection.error,
                "using what was learnt meanwhile" if detection.answered else "nothing answered",
                delay,
            )
            if not detection.answered:
                raise detection.error
            return detection.capabilities

    # ------------------------------------------------------------------ generation

    async def complete(
        self,
        prompt: Prompt,
        *,
        n: int = 1,
        stream: bool | None = None,
        params: SamplingParams | None = None,
        token_ids: bool = False,
        **overrides: Any,
    ) -> Generation:
        """``/v1/completions``: ``n`` samples continuing ``prompt`` (text or token ids).

        Sampling settings come from ``params`` and/or keywords (``max_tokens=64, temperature=0.7``).
        ``stream`` (default: the endpoint's) only changes how the answer travels, not the result.
        ``token_ids=True`` asks for the generated token ids too (``Choice.token_ids``), where the
        server can give them (see ``Capabilities.generated_token_ids``).
        """
        if not isinstance(prompt, str) and not all(isinstance(t, int) for t in prompt):
            raise TypeError("prompt must be a string or a sequence of token ids")
        if not prompt:
            raise ValueError("prompt is empty")
        payload = {"prompt": prompt if isinstance(prompt, str) else list(prompt)}
        return await self._generate("completions", payload, n, sampling(params, overrides), stream, token_ids)

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        stream: bool | None = None,
        params: SamplingParams | None = None,
        **overrides: Any,
    ) -> Generation:
        """``/v1/chat/completions``: ``n`` assistant replies to ``messages``.

        Reasoning from a ``reasoning_content`` field or from ``<think>`` tags lands in
        ``Choice.reasoning``; ``Choice.text`` is the answer alone.
        """
        if not messages:
            raise ValueError("chat needs at least one message")
        payload = {"messages": [dict(m) for m in messages]}
        return await self._generate("chat", payload, n, sampling(params, overrides), stream, False)

    def watch(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        params: SamplingParams | None = None,
        monitor: Monitor | None = None,
        **overrides: Any,
    ) -> contextlib.AbstractAsyncContextManager[Trace]:
        """Stream ONE generation and watch it token by token: ``async with endpoint.watch(prompt,
        max_tokens=512, top_logprobs=5, monitor=...) as trace: async for piece in trace: ...``.
        ``trace.close(reason)`` or the ``monitor`` firing aborts it on the server; ``trace.usage``
        counts what was generated however it ended (:mod:`._stream`)."""
        from ._stream import watch

        return watch(self, prompt, messages=messages, params=params, monitor=monitor, **overrides)

    async def _generate(
        self,
        kind: Kind,
        payload: dict[str, Any],
        n: int,
        params: SamplingParams,
        stream: bool | None,
        token_ids: bool,
    ) -> Generation:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        call = _Call(kind, payload, params, self.stream if stream is None else stream, token_ids)
        with request_scope() as rid:
            self.outstanding += 1
            started = time.perf_counter()
            try:
                parts = await self._run_planned(call, n, await self.capabilities(), rid)
            finally:
                self.outstanding -= 1
            return _merge(parts, rid, time.perf_counter() - started)

    async def _run_planned(self, call: _Call, n: int, caps: Capabilities, rid: str) -> list[Generation]:
        plan = _plan(n, call.params, caps)
        if len(plan) > 1:
            log.debug(
                "n=%d split into %d requests (max_n=%s, seeded_n_distinct=%s)",
                n,
                len(plan),
                caps.max_n,
                caps.seeded_n_distinct,
            )
        errors: list[EndpointError] = []
        if len(plan) == 1:  # the common case: no task group, no extra task per request
            offset, k, p = plan[0]
            try:
                return [await self._one(call, k, p, caps, rid, offset)]
            except EndpointError as exc:
                errors = [exc]
        else:
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(self._one(call, k, p, caps, rid, offset)) for offset, k, p in plan
                    ]
            except* EndpointError as group:
                errors = [e for e in group.exceptions if isinstance(e, EndpointError)]
            if not errors:
                return [t.result() for t in tasks]
        limit = min(n_limit_from(e) or 0 for e in errors)
        if limit and (caps.max_n is None or limit < caps.max_n):
            # Learn the server's n limit from its refusal and plan again.
            log.debug("server refused n=%d; it accepts at most %d: splitting", n, limit)
            caps = caps.replace(max_n=limit)
            if self._caps is not None:
                self._caps = caps
            elif self._reprobe.provisional is not None:
                self._reprobe.provisional = caps
            return await self._run_planned(call, n, caps, rid)
        raise errors[0]

    async def _one(
        self, call: _Call, n: int, params: SamplingParams, caps: Capabilities, rid: str, offset: int
    ) -> Generation:
        body = {**call.payload, **self._sampling_body(call, n, params, caps)}
        if call.stream and caps.streaming_usage:
            body["stream_options"] = {"include_usage": True}
        what = f"{self.name} {call.kind} n={n}"

        async def attempt() -> Generation:
            started = time.perf_counter()
            ttft: list[float] = []
            bodies = await self.raw_generate(call.kind, body, stream=call.stream, ttft=ttft)
            if not bodies:
                raise MalformedResponse(f"{what}: the stream ended without any data", request_id=rid)
            acc = ChoiceAccumulator(chat=call.kind == "chat")
            for b in bodies:
                acc.add(b)
            choices = acc.build(n_requested=n, keep_logprobs=params.wants_logprobs, index_offset=offset)
            # A server that reports no usage is billed its prompt's estimate (docs/proxy.md,
            # "Budgets and billing"), as the proxy's pass-through bills it.
            usage = replace(
                acc.usage or Usage(prompt_tokens=_body_prompt_estimate(body)),
                completion_tokens=sum(c.num_tokens for c in choices),
            )
            return Generation(
                choices=tuple(choices),
                usage=usage,
                model=acc.model,
                request_id=rid,
                latency_s=time.perf_counter() - started,
                ttft_s=ttft[0] - started if ttft else None,
                prompt_token_ids=tuple(acc.prompt_token_ids) if acc.prompt_token_ids else None,
            )

        return await self.retry.call(attempt, what=what)

    def _sampling_body(
        self, call: _Call, n: int, params: SamplingParams, caps: Capabilities
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"n": n}
        for name in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(params, name)
            if value is not None:
                body[name] = value
        if params.stop:
            body["stop"] = list(params.stop)
        top = min(params.top_logprobs, caps.max_top_logprobs)
        if top < params.top_logprobs:
            log.debug("top_logprobs=%d clamped to the server's limit %d", params.top_logprobs, top)
        # With n > 1 each choice is counted from its own token ids or logprobs: usage may count
        # only the first choice (llama.cpp), and never says how tokens split between choices.
        need_tokens = n > 1 or call.token_ids
        return_ids = call.kind == "completions" and caps.generated_token_ids == "return_token_ids"
        if return_ids and need_tokens:
            body["return_token_ids"] = True
        if params.wants_logprobs or (need_tokens and not return_ids):
            if call.kind == "chat":
                body["logprobs"] = True
                if top:
                    body["top_logprobs"] = top
            else:
                # llama.cpp returns nothing for logprobs=0; 1 costs nothing more.
                body["logprobs"] = max(top, 1) if caps.generated_token_ids == "logprobs" else top
        return {**body, **params.extra_body}

    # ------------------------------------------------------------------ raw HTTP

    async def raw_generate(
        self,
        kind: Kind,
        body: dict[str, Any],
        *,
        stream: bool = False,
        ttft: list[float] | None = None,
    ) -> list[dict[str, Any]]:
        """One HTTP request, no retries: the response body (or every stream chunk) as JSON objects.

        Low level: used by capability probes and by :meth:`complete`/:meth:`chat`. Errors are
        translated to :class:`EndpointError` subclasses.
        """
        model = await self._model_once()
        args = {k: v for k, v in body.items() if k in _SDK_FIELDS}
        extra = {k: v for k, v in body.items() if k not in _SDK_FIELDS}
        rid = _current_request_id()
        headers = {"X-Request-Id": rid}
        if program := program_id_var.get():
            headers["X-Program-Id"] = program
        resource: Any = self._client.chat.completions if kind == "chat" else self._client.completions
        where = f"{self.name} {'chat/completions' if kind == 'chat' else 'completions'}"
        meter = meter_var.get()  # set by whoever bills requests that do not complete
        attempt = meter.attempt(body) if meter is not None else None
        async with self._slot():
            try:
                if not stream:
                    # Reading the body ourselves inside the context means a cancelled request closes
                    # its connection (so the server aborts it) instead of finishing in the background.
                    async with resource.with_streaming_response.create(
                        model=model, extra_body=extra or None, extra_headers=headers, **args
                    ) as response:
                        if attempt is not None:
                            attempt.reached()
                        data = await response.read()  # bytes: JSON is UTF-8, no charset sniffing
                    try:
                        answer = json.loads(data)
                        if attempt is not None:
                            attempt.done = True
                        return [answer]
                    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                        text = data.decode("utf-8", errors="replace")
                        raise MalformedResponse(
                            f"{where}: the server's answer is not JSON ({exc}): {text[:200]!r}",
                            request_id=rid,
                        ) from exc
                chunks: list[dict[str, Any]] = []
                response = await resource.create(
                    model=model, stream=True, extra_body=extra or None, extra_headers=headers, **args
                )
                if attempt is not None:
                    attempt.reached()
                async with contextlib.aclosing(_iterate(response)) as events:
                    async for chunk in events:
                        if ttft is not None and not ttft and _has_content(chunk):
                            ttft.append(time.perf_counter())
                        chunks.append(chunk)
                        if attempt is not None:
                            attempt.streamed(chunk)
                if attempt is not None:
                    attempt.done = True
                return chunks
            except EndpointError:
                raise
            except Exception as exc:
                raise translate(exc, where=where, request_id=rid) from exc

    async def root_request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """A JSON request to a server route outside ``/v1`` (``/tokenize``, ``/slots``, ``/props``)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.root_url, headers=self._headers, timeout=self.timeout, transport=self._transport
            )
        where = f"{self.name} {method} {path}"
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise translate(exc, where=where, request_id=None) from exc
        except httpx.TransportError as exc:
            raise translate(exc, where=where, request_id=None) from exc
        if response.status_code >= 400:
            raise BadRequest(
                f"{where}: HTTP {response.status_code}: {response.text[:200]}", status=response.status_code
            )
        try:
            return json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            text = response.content[:200].decode("utf-8", errors="replace")
            raise MalformedResponse(f"{where}: answer is not JSON ({exc}): {text!r}") from exc

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` from the server's ``/tokenize`` (llama.cpp and vLLM have one)."""
        model = await self.model_name()
        # llama.cpp reads "content", vLLM "prompt"; neither minds the other's field.
        answer = await self.root_request(
            "POST",
            "/tokenize",
            {
                "content": text,
                "prompt": text,
                "model": model,
                "add_special": False,
                "add_special_tokens": False,
            },
        )
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise MalformedResponse(f"{self.name}: /tokenize answered {str(answer)[:200]!r}")
        return tokens

    async def render_chat(self, messages: Sequence[Message]) -> str | list[int]:
        """The completions prompt for ``messages`` with the server's chat template applied.

        A string (llama.cpp ``/apply-template``) or token ids (vLLM ``/tokenize`` with messages).
        """
        caps = await self.capabilities()
        msgs = [dict(m) for m in messages]
        if caps.chat_template == "apply-template":
            answer = await self.root_request("POST", "/apply-template", {"messages": msgs})
            return str(answer["prompt"])
        if caps.chat_template == "tokenize-messages":
            answer = await self.root_request(
                "POST",
                "/tokenize",
                {"model": await self.model_name(), "messages": msgs, "add_generation_prompt": True},
            )
            return [int(t) for t in answer["tokens"]]
        raise BadRequest(
            f"{self.name}: the server cannot render chat templates; continue chats with assistant prefill "
            "or pass a chat_template callable"
        )

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._in_flight:
            if self._throttler is not None:
                async with self._throttler:
                    pass
            yield

    async def _guard(self, awaitable: Any, where: str) -> Any:
        try:
            return await awaitable
        except Exception as exc:
            raise translate(exc, where=f"{self.name} {where}", request_id=None) from exc


@dataclass(frozen=True, slots=True)
class _Call:
    """One logical generation request, before it is planned into HTTP requests."""

    kind: Kind
    payload: dict[str, Any]
    params: SamplingParams
    stream: bool
    token_ids: bool


def _body_prompt_estimate(body: Mapping[str, Any]) -> int:
    """The estimated prompt tokens of a request body (its ``messages`` or ``prompt``)."""
    messages, prompt = body.get("messages"), body.get("prompt")
    return prompt_estimate(
        prompt if isinstance(prompt, str | list) else None,
        messages if isinstance(messages, list) else None,
    )


def check_url(base_url: str) -> None:
    """ValueError unless ``base_url`` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad endpoint URL {base_url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"endpoint URL {base_url!r} needs an http:// or https:// scheme and a host, "
            "e.g. http://127.0.0.1:8000/v1"
        )


def _throttler(requests_per_second: float) -> Throttler:
    # asyncio-throttle counts whole requests per period: 0.5/s is 1 per 2 s, 7.5/s is 8 per 1.07 s.
    rate = max(1, round(requests_per_second))
    return Throttler(rate_limit=rate, period=rate / requests_per_second)


def _current_request_id() -> str:
    return request_id_var.get() or new_id("req")


async def _iterate(stream: Any) -> AsyncGenerator[dict[str, Any], None]:
    """Chunks of an SDK stream as dicts; closing the generator closes the HTTP response."""
    try:
        async for chunk in stream:
            yield chunk.model_dump(exclude_unset=True)
    finally:
        await stream.close()


def _has_content(chunk: Mapping[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        part = choice.get("delta") or choice
        if any(part.get(k) for k in ("text", "content", "reasoning_content", "reasoning", "tool_calls")):
            return True
    return False


def _plan(n: int, params: SamplingParams, caps: Capabilities) -> list[tuple[int, int, SamplingParams]]:
    """Split n samples into HTTP requests: ``(choice offset, n, params)`` each. A request with
    ``tools`` asks one sample per request: its tokens are then counted from ``usage``, because the
    logprobs that count the choices of one request are refused with tools (llama.cpp, streaming)."""
    alone = params.seed is not None and not caps.seeded_n_distinct
    if n > 1 and (alone or params.extra_body.get("tools")):
        return [(i, 1, params.for_sample(i)) for i in range(n)]
    size = min(n, caps.max_n or n)
    return [(i, min(size, n - i), params.for_sample(i)) for i in range(0, n, size)]


def _merge(parts: list[Generation], rid: str, latency: float) -> Generation:
    if len(parts) == 1:
        return replace(parts[0], latency_s=latency)
    usage = Usage()
    for part in parts:
        usage = usage + part.usage
    ttfts = [p.ttft_s for p in parts if p.ttft_s is not None]
    return Generation(
        choices=tuple(c for p in parts for c in p.choices),
        usage=usage,
        model=parts[0].model,
        request_id=rid,
        latency_s=latency,
        ttft_s=min(ttfts) if ttfts else None,
        requests=len(parts),
        prompt_token_ids=parts[0].prompt_token_ids,
    )
