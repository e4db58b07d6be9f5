"""Pass-through: a request without a dynasor option goes upstream untouched, as one runtime program.

The body is forwarded byte for byte (tool calls, unknown fields and all) with two exceptions: a
``dynasor`` field is removed, and a stream that does not ask for usage gets
``stream_options.include_usage`` (``ProxyConfig.meter_streams``) so that its tokens can be counted;
the usage chunk this adds is removed before the client sees it. The response is the upstream's:
its body (non-streaming) or its SSE events (split on the bytes as :mod:`._sse` says: a plain
``data:`` event goes as the upstream's own bytes), forwarded the moment they arrive (no buffering),
with upstream errors mapped to HTTP errors (:mod:`._errors`).

The program holds one runtime request slot (``n`` sequences) while the upstream works. Under a
budget (the proxy's, the key's) it first reserves ``max_tokens x n`` plus the prompt's estimate,
sending ``max_tokens`` (then ``n``) shrunk to what is left, or failing with 429 when not even a few
tokens fit. It charges the tokens upstream reports (``usage``); without them (a stream cut short,
an upstream that reports none), once the upstream accepted the request, the prompt's estimate and
the tokens counted in what it streamed or answered (:mod:`dynasor_client.endpoints._meter`).
Cancelling it (client disconnect) closes the upstream connection, so the upstream aborts.
A deadline that passes first aborts it too: 504 ``deadline_exceeded`` (an error event if the stream
had started); a spent global budget: 429 ``insufficient_quota``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent
from starlette.responses import Response

from .._exceptions import BudgetExhausted
from ..endpoints import Usage, chunk_tokens, prompt_estimate
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind
from . import _sse
from ._errors import ProxyError, transport_error, upstream_http_error
from ._pool import Answer, Direct
from ._run import Run

PATHS = {"chat": "chat/completions", "completions": "completions"}


@dataclass(frozen=True, slots=True)
class Forward:
    """One pass-through request as it goes upstream."""

    kind: str
    content: bytes
    headers: dict[str, str]
    stream: bool
    strip_usage: bool  # we added include_usage: remove the usage the client did not ask for
    n: int
    own_key: bool  # sent with the proxy's own upstream key (not the client's)
    error_bytes: int = 64 * 1024  # how much of an upstream error body is read (ProxyConfig)
    event_bytes: int = _sse.MAX_EVENT_BYTES  # the longest upstream stream event


def prepare(body: dict[str, Any], raw: bytes, *, meter_streams: bool) -> tuple[bytes, bool]:
    """The bytes to send upstream and whether include_usage was added (module docs)."""
    modified = "dynasor" in body
    body = {k: v for k, v in body.items() if k != "dynasor"}
    strip = False
    if body.get("stream") is True and meter_streams:
        options = body.get("stream_options")
        if not (isinstance(options, Mapping) and options.get("include_usage")):
            body["stream_options"] = {
                **(options if isinstance(options, Mapping) else {}),
                "include_usage": True,
            }
            modified = strip = True
    return (json.dumps(body, ensure_ascii=False).encode("utf-8") if modified else raw), strip


async def read_bounded(response: httpx.Response | Answer, limit: int) -> bytes:
    """The first ``limit`` bytes of ``response``'s body (the rest is never read: close the response
    after this)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk[: limit - size])
        size += len(parts[-1])
        if size >= limit:
            break
    return b"".join(parts)


def request_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The estimated prompt tokens of a pass-through body (``messages`` or ``prompt``)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return prompt_estimate(None, [m for m in messages if isinstance(m, Mapping)])
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt_estimate(prompt)
    if isinstance(prompt, list):
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return sum(
            prompt_estimate(p) if isinstance(p, str) else len(p) if isinstance(p, list) else 0 for p in prompt
        )
    return 0


def usage_of(data: Any) -> Usage | None:
    """A response's or chunk's ``usage`` as :class:`Usage` (None when absent)."""
    usage = data.get("usage") if isinstance(data, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
        cached if isinstance(cached, int) else None,
    )


class PassThrough:
    """The program of one pass-through request (module docs)."""

    def __init__(
        self, http: httpx.AsyncClient, upstream: str, forward: Forward, *, direct: Direct | None = None
    ) -> None:
        self.http, self.upstream, self.forward = http, upstream, forward
        self.direct = direct  # sends without httpx's request and response objects (._pool)
        self.usage: Usage | None = None
        self.tally = _Tally()  # the content events streamed (billing: chunk_tokens)
        self.accepted = False  # the upstream answered 2xx: the prompt is billed
        self.whole: Any = None  # a non-streaming answer, parsed

    async def __call__(self, context: ProgramContext, run: Run) -> ProgramResult:
        try:
            return await self._call(context, run)
        except BudgetExhausted as exc:  # refused before anything was sent: the client gets a 429
            raise ProxyError(
                f"the token budget (the API key's or the proxy's) does not cover this request: {exc}",
                status=429,
                type="insufficient_quota",
                code="insufficient_quota",
            ) from exc

    async def _call(self, context: ProgramContext, run: Run) -> ProgramResult:
        held = 0
        try:
            async with context.request_slot(self.forward.n, tokens=0):
                content = self.forward.content
                if context.budgeted():
                    content, held = await self._reserve(context)
                try:
                    response = await self._send(content)
                except httpx.HTTPError as exc:
                    raise transport_error(exc, self.upstream) from exc
                try:
                    self.accepted = response.status_code < 400
                    if response.status_code >= 400:
                        content = await read_bounded(response, self.forward.error_bytes)
                        raise upstream_http_error(
                            response.status_code, content, response.headers, own_key=self.forward.own_key
                        )
                    if self.forward.stream and response.headers.get("content-type", "").startswith(
                        _sse.MEDIA_TYPE
                    ):
                        await self._relay(response, run)
                    else:
                        await self._whole(response, run)
                except httpx.HTTPError as exc:
                    raise transport_error(exc, self.upstream) from exc
                finally:
                    await response.aclose()
        finally:
            context.release(held)
            context.charge(TokenKind.GENERATED, self.billed())
        return ProgramResult(
            answer=None,
            confidence=0.0,
            tokens=context.usage,
            steps=1,
            stop_reason=StopReason.CAP,
            certaindex=(),
            program_id=context.program_id,
        )

    async def _send(self, content: bytes) -> httpx.Response | Answer:
        path = PATHS[self.forward.kind]
        if self.direct is not None:
            return await self.direct.post(path, self.forward.headers, content)
        request = self.http.build_request("POST", path, content=content, headers=self.forward.headers)
        return await self.http.send(request, stream=True)

    async def _reserve(self, context: ProgramContext) -> tuple[bytes, int]:
        """Reserve ``max_tokens x n`` plus the prompt's estimate; the body to send, shrunk to what
        fits (``max_tokens``, then ``n``), and what was held. Raises BudgetExhausted."""
        content, n = self.forward.content, self.forward.n
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return content, (await context.fit(TokenKind.GENERATED, n, None, 0))[2]
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        most = body.get(key)
        most = most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else None
        fitted_n, fitted, held = await context.fit(TokenKind.GENERATED, n, most, request_prompt_tokens(body))
        if fitted_n != n or fitted != most:
            if fitted_n != n:
                body["n"] = fitted_n
            body[key] = fitted
            content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return content, held

    def billed(self) -> Usage:
        """What the request costs: the upstream's ``usage``; else, once the upstream accepted it,
        the prompt's estimate and the tokens counted in what streamed (or in the whole answer)."""
        if self.usage is not None:
            return self.usage
        if not self.accepted:
            return Usage()
        completion = self.tally.settle() if self.whole is None else chunk_tokens(self.whole)
        try:
            body = json.loads(self.forward.content)
        except ValueError:
            body = None
        return Usage(request_prompt_tokens(body) if isinstance(body, dict) else 0, completion)

    async def _whole(self, response: httpx.Response | Answer, run: Run) -> None:
        content = await response.aread()
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            self.whole = json.loads(content)
            self.usage = usage_of(self.whole)
            if not isinstance(self.whole, Mapping):
                self.whole = None
        run.state["response"] = Response(
            content,
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "application/json"),
        )

    async def _relay(self, response: httpx.Response | Answer, run: Run) -> None:
        """Forward the upstream's events as they arrive: each read's whole events go to the client
        as one piece, plain ``data:`` events as the upstream's own bytes (:class:`._sse.EventSplitter`).
        Only an event that mentions ``"usage"`` is parsed here (the usage chunk: metered, and
        removed when the proxy asked for it); the content events are tallied (:class:`_Tally`)."""
        splitter = _sse.EventSplitter(self.forward.event_bytes)
        async for data in response.aiter_bytes():
            out = self._pass(splitter.feed(data))
            if out:
                await run.relay(out)
        out = self._pass(splitter.close())
        if out:
            await run.relay(out)

    def _pass(self, events: list[bytes | ServerSentEvent]) -> bytes:
        """What the client gets of ``events``, metered (:meth:`_relay`)."""
        out: list[bytes] = []
        for item in events:
            if isinstance(item, bytes):
                payload = item[6:-2]  # b"data: " ... b"\n\n"
                if b'"usage"' not in payload:
                    if payload != b"[DONE]":
                        self.tally.add(payload)
                    out.append(item)
                    continue
                data = _sse.loads(payload)
            else:
                data = _sse.payload(item)
            if isinstance(data, dict):
                if isinstance(data.get("usage"), dict):
                    self.usage = usage_of(data)
                self.tally.count(data)
                if self.forward.strip_usage and "usage" in data:
                    if not data.get("choices"):
                        continue  # the usage chunk we asked for: not the client's
                    data.pop("usage")
                    out.append(_sse.event(data))
                    continue
            out.append(item if isinstance(item, bytes) else _sse.frame(item))
        return b"".join(out)


class _Tally:
    """The content events a stream forwarded, counted for billing (``chunk_tokens``) only when it
    is needed: their payloads are kept unparsed, and parsed when the upstream reported no usage
    (:meth:`PassThrough.billed`) or once they pass :attr:`HOLD` bytes (so a long stream holds
    little). An upstream that reports usage at the end (the proxy asks for it) is never parsed."""

    HOLD = 64 * 1024

    __slots__ = ("content_events", "held", "size", "tokens")

    def __init__(self) -> None:
        self.content_events = 0
        self.tokens = 0  # tokens counted in the content events parsed so far
        self.held: list[bytes] = []
        self.size = 0

    def add(self, payload: bytes) -> None:
        self.held.append(payload)
        self.size += len(payload)
        if self.size > self.HOLD:
            self.settle()

    def count(self, data: Mapping[str, Any]) -> None:
        if data.get("choices"):
            self.content_events += 1
            self.tokens += chunk_tokens(data)

    def settle(self) -> int:
        """Count what is held; the tokens of every content event so far."""
        for payload in self.held:
            data = _sse.loads(payload)
            if isinstance(data, dict):
                self.count(data)
        self.held, self.size = [], 0
        return self.tokens


class PassThroughRenderer:
    """A pass-through run's response: the upstream's own body, or its stream (already sent)."""

    def __init__(self, run: Run, errors: Any) -> None:
        self.run, self._errors = run, errors

    def whole(self, result: ProgramResult) -> Response:
        if result.partial:
            return stopped(result).response()
        response: Response | None = self.run.state.get("response")
        if response is None:  # a stream that ended without any event
            return Response(_sse.DONE, media_type=_sse.MEDIA_TYPE, headers=_sse.HEADERS)
        return response

    def tail(self, result: ProgramResult) -> list[bytes]:
        if result.partial:
            return [_sse.event(stopped(result).body())]
        return []  # the upstream's own [DONE] was forwarded

    def error(self, exc: BaseException) -> ProxyError:
        error: ProxyError = self._errors(exc)
        return error

    def refusal(self, result: ProgramResult) -> ProxyError | None:
        return None  # whole() answers a stopped run's error; a started stream ends with it

    def headers(self, result: ProgramResult | None) -> dict[str, str]:
        return {}


def stopped(result: ProgramResult) -> ProxyError:
    """The error of a pass-through the runtime stopped before the upstream answered in full."""
    if result.stop_reason is StopReason.DEADLINE:
        return ProxyError(
            "the request's deadline (X-Dynasor-Deadline-S or dynasor.deadline_s) passed before the "
            "upstream finished; the upstream request was aborted",
            status=504,
            type="timeout_error",
            code="deadline_exceeded",
        )
    if result.stop_reason in (StopReason.BUDGET, StopReason.HOPELESS):
        return ProxyError(
            "the proxy's token budget is spent",
            status=429,
            type="insufficient_quota",
            code="insufficient_quota",
        )
    return ProxyError(f"the runtime stopped the request ({result.stop_reason.value})", status=503)
