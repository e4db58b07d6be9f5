"""The proxy's routes (FastAPI): what each one checks, and which program serves it.

- ``POST /v1/chat/completions``, ``POST /v1/completions``: key, budget, body and options are checked
  first (401, 429, 400); then the request runs as one program of the proxy's runtime: pass-through
  (no dynasor option; :mod:`._passthrough`) or a dynasor program (:mod:`._programs`), served by
  :class:`~._run.RunResponse`.
- ``GET /v1/models``: the upstream's list, as it sends it.
- ``GET /health``: ``{"status": "ok"}`` (no key needed).
- ``GET /dynasor/stats``: counters, tokens spent and saved, per-key spending (by key fingerprint);
  an admin key (or any client when the proxy takes no keys) sees it all, any other key its own
  spending only.

Every response, error or stream goes through :class:`~._errors.RedactingMiddleware`: no byte of
the proxy's secrets (upstream key, upstream URL credentials, client keys) reaches a client.

A generation request's body must be one JSON object (RFC 8259), else 400 ``invalid_request_error``
before anything else runs: at most :data:`._body.MAX_NESTING` (128) arrays and objects deep (checked on
the bytes, before parsing), no ``NaN``/``Infinity`` and no number too large for a float (Python's
``json`` would accept both), valid UTF-8, and no lone UTF-16 surrogate (``"\\ud800"``) in any
string or key (such text cannot be sent upstream). A dynasor request's sampling fields are checked
too: ``temperature`` and ``top_p`` finite numbers, ``seed`` an integer, ``stop`` a string or a list
of strings, ``max_tokens`` an integer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..endpoints import Message, RetryPolicy, SamplingParams
from ..program import ProgramResult
from . import _sse
from ._body import json_object, shown
from ._config import ProxyConfig
from ._errors import ProxyError, RedactingMiddleware, transport_error, upstream_http_error
from ._keys import KeyAccount
from ._options import DEADLINE_HEADER, DynasorOptions, parse_options
from ._passthrough import (
    Forward,
    PassThrough,
    PassThroughRenderer,
    prepare,
    read_bounded,
    request_prompt_tokens,
)
from ._programs import DynasorProgram, DynasorRenderer, DynasorRequest
from ._run import Run, RunResponse
from ._service import ProxyService
from ._store import Lease, dynasor_reservation, passthrough_reservation

Kind = Literal["completions", "chat"]

#: The most arrays and objects a request body may nest (module docs).

#: Body fields a dynasor request reads itself; every other field goes upstream as an extra field.
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "n",
        "stream",
        "stream_options",
        "dynasor",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "user",
        "logprobs",
        "top_logprobs",
    }
)


def create_proxy_app(config: ProxyConfig, *, retry: RetryPolicy | None = None) -> FastAPI:
    """The proxy as an ASGI application (serve it with uvicorn; its lifespan starts the runtime).

    ``retry`` is the retry policy of the dynasor programs' upstream requests (pass-through requests
    are never retried: the client sees the upstream's answer). ``app.state.service`` is the
    :class:`~._service.ProxyService`.
    """
    service = ProxyService(config, retry=retry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.aclose()

    app = _ProxyApp(
        title="dynasor-client proxy", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.service = service
    app.add_middleware(RedactingMiddleware, redactor=service.redactor)
    app.generation = RedactingMiddleware(_generation_app(service), redactor=service.redactor)

    @app.exception_handler(ProxyError)
    async def proxy_error(request: Request, exc: ProxyError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path} on the dynasor proxy"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return ProxyError(message, status=exc.status_code).response()

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/dynasor/stats")
    async def stats(request: Request) -> Response:
        account = service.authenticate(request.headers)
        return JSONResponse(service.stats(account, await service.spending(account)))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        service.authenticate(request.headers)
        headers, own = service.upstream_headers(request.headers)
        headers.pop("content-type", None)
        try:
            async with service.http.stream("GET", "models", headers=headers) as answer:
                if answer.status_code >= 400:
                    content = await read_bounded(answer, service.config.max_error_body_bytes)
                    raise upstream_http_error(answer.status_code, content, answer.headers, own_key=own)
                await answer.aread()
        except httpx.HTTPError as exc:
            raise transport_error(exc, service.upstream_display) from exc
        return Response(
            answer.content,
            answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _generate(service, "chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(service, "completions", request)

    return app


#: The generation routes, which :class:`_ProxyApp` serves without FastAPI's routing.
_GENERATION: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class _ProxyApp(FastAPI):
    """The proxy's FastAPI app, whose generation routes (``POST`` on :data:`_GENERATION`) skip
    FastAPI's middleware stack, routing and endpoint machinery: that is most of the proxy's fixed
    cost per pass-through request (issue 17, part 8). They go through the same
    :class:`~._errors.RedactingMiddleware`, and answer errors the way the routes do."""

    generation: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.generation is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in _GENERATION
            and not self.root_path
        ):
            await self.generation(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _generation_app(service: ProxyService) -> ASGIApp:
    async def generation(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await _generate(service, _GENERATION[scope["path"]], Request(scope, receive))
        except Exception as exc:  # a ProxyError as its answer; anything else: a logged 500
            response = service.error(exc).response()
        await response(scope, receive, send)

    return generation


async def _generate(service: ProxyService, kind: Kind, request: Request) -> Response:
    service.counters.requests += 1
    try:
        account = service.authenticate(request.headers)
        service.check_budget(account)
        raw = await _read_body(request, service.config.max_body_bytes, service.config.header_timeout_s)
        body = json_object(raw)
        _check_limits(body, service.config)
        options = parse_options(body, request.headers.get(DEADLINE_HEADER))
        stream = body.get("stream") is True
        if options.algorithm is None:
            wants = _wants(
                service, account, lambda: passthrough_reservation(body, request_prompt_tokens(body))
            )
            lease = await service.lease(account, wants)
            with _released_on_error(service, lease):
                return _passthrough(service, kind, request, raw, body, options, stream, lease)
        service.check_options(options)
        wants = _wants(service, account, lambda: dynasor_reservation(options.token_budget))
        request_ = dynasor_request(kind, body, options, stream)  # 400s before anything is reserved
        lease = await service.lease(account, wants)
        with _released_on_error(service, lease):
            return _dynasor(service, request_, options, stream, lease)
    except ProxyError:
        service.counters.refused += 1
        raise


async def _read_body(request: Request, limit: int, idle_s: float) -> bytes:
    """The request body, at most ``limit`` bytes: 413 on a ``Content-Length`` above it (before
    reading any of it), or as soon as a chunked body passes it (the rest is never read); 408 when
    the client sends none of it for ``idle_s`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    pieces = request.stream()
    while True:
        try:
            async with asyncio.timeout(idle_s):  # no task per piece, unlike wait_for
                chunk = await anext(pieces)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ProxyError(
                f"the client sent no part of the request body for {idle_s:g} s (--header-timeout)",
                status=408,
                code="request_timeout",
                headers={"connection": "close"},
            ) from None
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        f"the request body is larger than this proxy's limit of {limit} bytes (--max-body-bytes)",
        status=413,
        code="request_too_large",
        headers={"connection": "close"},  # the unread rest of the body is not read: close
    )


def _check_limits(body: Mapping[str, Any], config: ProxyConfig) -> None:
    """400 for an ``n`` above ``max_n`` (or the runtime window) and a ``max_tokens`` above the
    proxy's limit (docs/proxy.md, "Limits")."""
    n = body.get("n")
    most_n = min(config.max_n, config.max_in_flight)
    if isinstance(n, int) and not isinstance(n, bool) and n > most_n:
        raise ProxyError(
            f"n is at most {most_n} on this proxy (--max-n), got {n}", param="n", code="n_too_large"
        )
    if config.max_tokens is None:
        return
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > config.max_tokens:
            raise ProxyError(
                f"{name} is at most {config.max_tokens} on this proxy (--max-tokens), got {value}",
                param=name,
                code="max_tokens_too_large",
            )


@contextlib.contextmanager
def _released_on_error(service: ProxyService, lease: Lease | None) -> Iterator[None]:
    """Give a lease back when its run could not be started (else the run's end settles it)."""
    try:
        yield
    except BaseException:
        if lease is not None:
            service.store.settle(lease, 0, 0)
        raise


def _wants(
    service: ProxyService, account: KeyAccount | None, wants: Callable[[], tuple[int, int]]
) -> tuple[int, int] | None:
    """A request's ``(most, least)`` tokens, worked out only for a shared store's budgeted key."""
    shared = service.store.shared and account is not None and account.budget.limit is not None
    return wants() if shared else None


def _passthrough(
    service: ProxyService,
    kind: Kind,
    request: Request,
    raw: bytes,
    body: dict[str, Any],
    options: DynasorOptions,
    stream: bool,
    lease: Lease | None,
) -> Response:
    service.counters.passthrough += 1
    content, strip = prepare(body, raw, meter_streams=service.config.meter_streams)
    headers, own = service.upstream_headers(request.headers)
    n = body.get("n")
    forward = Forward(
        kind, content, headers, stream, strip, n if isinstance(n, int) and n > 0 else 1, own,
        error_bytes=service.config.max_error_body_bytes,
    )  # fmt: skip
    program = PassThrough(service.http, service.upstream_display, forward, direct=service.direct)
    run = Run(
        service.runtime,
        program,
        deadline_s=options.deadline_s,
        token_cap=None,
        name=f"passthrough-{kind}",
        on_end=lambda r: service.ended(r, lease, f"pass-through {kind}"),
        budget=lease.pool if lease is not None else None,
        buffer=service.config.stream_buffer,
        stall_s=service.config.stall_timeout_s,
    )
    service.track(run)
    return RunResponse(run, _PassThroughChecked(run, service.error, forward), stream=stream)


class _PassThroughChecked(PassThroughRenderer):
    """The pass-through's response, checked: a whole body answering a stream request becomes its
    events (:func:`._sse.events_of_body`), never an empty stream; a body that is not UTF-8 is 502."""

    def __init__(self, run: Run, errors: Any, forward: Forward) -> None:
        super().__init__(run, errors)
        self.forward = forward

    def whole(self, result: ProgramResult) -> Response:
        upstream: Response | None = self.run.state.get("response")
        if upstream is not None and not result.partial:
            try:
                bytes(upstream.body).decode("utf-8")
            except UnicodeDecodeError:
                return _sse.invalid_utf8("an answer").response()
        return super().whole(result)

    def tail(self, result: ProgramResult) -> list[bytes]:
        events = super().tail(result)
        whole: Response | None = self.run.state.get("response")
        if events or whole is None:
            return events
        return _sse.events_of_body(bytes(whole.body), usage=not self.forward.strip_usage)


def _dynasor(
    service: ProxyService,
    request: DynasorRequest,
    options: DynasorOptions,
    stream: bool,
    lease: Lease | None,
) -> Response:
    kind = request.kind
    algorithm = str(options.algorithm)
    service.counters.programs[algorithm] = service.counters.programs.get(algorithm, 0) + 1
    program = DynasorProgram(request, service.reward_model)
    run = Run(
        service.runtime,
        program,
        deadline_s=options.deadline_s,
        token_cap=service.token_cap(lease, options.token_budget),
        name=f"{algorithm}-{kind}",
        on_end=lambda r: service.ended(r, lease, f"{algorithm} {kind}"),
        budget=lease.pool if lease is not None else None,
        buffer=service.config.stream_buffer,
        stall_s=service.config.stall_timeout_s,
    )
    service.track(run)
    return RunResponse(run, DynasorRenderer(run, program, service.error), stream=stream)


def dynasor_request(
    kind: Kind, body: Mapping[str, Any], options: DynasorOptions, stream: bool
) -> DynasorRequest:
    """The parsed request of a dynasor program (400 for what the programs cannot serve)."""
    n = body.get("n", 1)
    if n not in (1, None):
        raise ProxyError(
            "n must be 1 with a dynasor technique: the technique decides how many samples to draw "
            "(set dynasor.n for the most)",
            param="n",
        )
    messages: list[Message] | None = None
    prompt: str | list[int] | None = None
    if kind == "chat":
        raw_messages = body.get("messages")
        if (
            not isinstance(raw_messages, list)
            or not raw_messages
            or not all(isinstance(m, dict) for m in raw_messages)
        ):
            raise ProxyError("'messages' must be a non-empty list of message objects", param="messages")
        messages = list(raw_messages)
        question = _question(messages)
        entry = options.entry
        if body.get("tools") and entry is not None and entry.answer != "vote":
            raise ProxyError(  # docs/proxy.md, "Tools": only the votes can answer with tool calls
                f"{entry.title} (algorithm {entry.name!r}) cannot answer with tool calls: it continues "
                "its own chat as text. Use sc or best_of_n, or send the request without a technique",
                param="tools",
                code="tools_unsupported",
            )
    else:
        if options.entry is not None and options.entry.chat_only:
            raise ProxyError(
                f"{options.entry.title} (algorithm {options.entry.name!r}) runs on /v1/chat/completions only",
                param="dynasor.algorithm",
            )
        raw_prompt = body.get("prompt")
        if isinstance(raw_prompt, str) and raw_prompt:
            prompt, question = raw_prompt, raw_prompt
        elif (
            isinstance(raw_prompt, list)
            and raw_prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in raw_prompt)
        ):
            prompt, question = list(raw_prompt), ""
        else:
            raise ProxyError(
                "'prompt' must be one non-empty string (or token ids) with a dynasor technique",
                param="prompt",
            )
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    stop = body.get("stop")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise ProxyError(f"{name} must be a number, got {shown(value)}", param=name)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ProxyError(f"seed must be an integer, got {shown(seed)}", param="seed")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise ProxyError(f"stop must be a string or a list of strings, got {shown(stop)}", param="stop")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise ProxyError(f"max_tokens must be an integer, got {shown(max_tokens)}", param="max_tokens")
    try:
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            seed=body.get("seed"),
            stop=() if stop is None else (stop,) if isinstance(stop, str) else tuple(stop),
            extra_body={k: v for k, v in body.items() if k not in _HANDLED},
        )
    except (TypeError, ValueError) as exc:
        raise ProxyError(f"invalid sampling settings: {exc}") from None
    stream_options = body.get("stream_options")
    include_usage = (
        stream and isinstance(stream_options, Mapping) and bool(stream_options.get("include_usage"))
    )
    return DynasorRequest(
        kind=kind,
        options=options,
        model=str(body.get("model") or ""),
        question=question,
        messages=messages,
        prompt=prompt,
        params=params,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
    )


def _question(messages: list[Message]) -> str:
    """The last user message's text (what a reward model judges the answers against)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""
