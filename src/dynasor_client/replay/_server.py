"""The replay server: an OpenAI-compatible HTTP server answering from recorded samples, GPU-timed.

``dynasor-client serve-replay --traces FILE`` runs it; :class:`ReplayServer` runs it in-process on a
free port (``async with ReplayServer(path) as server:`` then ``server.base_url``). What a request gets
back is decided by :class:`~._engine.ReplayEngine` (every rule is documented there: which question a
prompt asks, draws without replacement per program, continuations, probes, token pieces); *when* it
gets it, by the continuous-batching GPU model of :mod:`._timing` run in scaled real time by
:class:`~._timing_drivers.RealtimeDriver` (``profile``, ``time_scale``).

Routes:

- ``GET /v1/models``, ``GET /health``.
- ``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming or not. The program is the
  ``user`` field, else the ``X-Program-Id`` header, else the request alone. ``n``, ``max_tokens``
  (chat: also ``max_completion_tokens``), ``stop``, ``seed``, ``temperature`` (0: greedy, see the
  engine), ``logprobs``/``top_logprobs``, ``stream_options.include_usage`` and vLLM's
  ``return_token_ids`` are honoured; ``echo``, ``suffix`` and several prompts in one request are
  refused (400); other sampling fields are accepted and ignored. A completions prompt may be token
  ids from this server's vocabulary (``/tokenize`` or generated ``token_ids``). A chat's text is its
  message contents joined by newlines; a trailing assistant message is always continued (prefill,
  never echoed), with or without ``continue_final_message``. Any model name is accepted.
- ``POST /tokenize`` (``prompt`` or ``content``) and ``POST /detokenize`` (``tokens``): the engine's
  own vocabulary (one id per piece or unit of text).
- ``POST /pooling``: process-reward scores in vLLM's pooling response shape (below).
- ``GET /metrics``: Prometheus text with vLLM's metric names (running and waiting requests, tokens
  generated, aborted requests, prefix-cache hit rate, KV usage, ...) plus ``replay:`` counters;
  ``/metrics?format=json`` gives the same figures as one JSON object.

**logprobs** come from the trace (``token_logprobs``, ``top_logprobs``) when it recorded them for
every token of the sample; otherwise a choice's ``logprobs`` is ``null`` (nothing is made up) and
the choice carries its ``token_ids`` instead, so that clients counting tokens from logprobs (ours
does, for ``n > 1``) can still count them. The
shape is the chat one (``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``) or the legacy
one (``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``): ``logprobs_shape="auto"``
answers each route in its OpenAI shape (chat on chat, legacy on completions), ``"chat"`` or
``"legacy"`` forces one everywhere. Tokens are the engine's pieces.

**usage** is exact in the engine's token pieces: ``prompt_tokens`` as the engine counts them,
``completion_tokens`` the sum of every choice's pieces, ``prompt_tokens_details.cached_tokens`` the
prefix-cache hits of the timing model (for ``n > 1``, those of the first choice).

**replay_timings** (an extension field of this server, absent from OpenAI's API): every
non-streaming response body, and the usage chunk of a stream (``stream_options.include_usage``),
carries ``"replay_timings"``, a list with one object per choice (in choice order) of
``{"arrival", "first_token", "finish", "prompt_tokens", "output_tokens", "cached_prompt_tokens"}``:
the times in modelled seconds on the timing driver's clock (``first_token`` and ``finish`` are
``null`` for a choice that never got there), the token counts those of the timing model. With
``record_submissions=True`` the service also keeps, in :attr:`ReplayService.submissions`, every
choice it submitted to the driver as ``(request_id, arrival_time, prompt_keys, output_tokens)``:
enough to replay the same workload in a :class:`~._timing_drivers.VirtualClockSimulator`.

**Rewards** (``POST /pooling``, vLLM's shape for process reward models): the body has ``input`` (or
``prompt``: a string or a list of strings) or ``messages``; each input is a question followed by a
prefix of one of its samples. The answer is ``{"object": "list", "data": [{"index": i,
"object": "pooling", "data": [[score], ...]}], "usage": ...}`` with one ``[score]`` per reasoning step
(:meth:`~._engine.ReplayEngine.rewards`): recorded ``step_rewards`` when the trace has them, else the
sample's one outcome ``reward`` for every prefix of it, an approximation that each such item states
in its ``"approximation"`` field.

**Streaming** sends, at each flush, every token due since the previous flush in one SSE event (all
choices of the request together). ``flush_interval_s`` (default 0.05 s) is the least time between
two events of a stream, so a fast modelled GPU costs the server one event per stream per interval
rather than one per token. While the timing model falls behind real time (the server's one core is
the bottleneck) the interval widens, up to 1 s, and it narrows back once the replay keeps up
(:meth:`ReplayService.adapt_flush_interval`); ``dynasor-client bench replay`` measures where that
happens. The first event (the first token) and the last (the finish) are never held back: a stream
about to finish flushes token by token. A client that disconnects has its request aborted at once
(its KV freed in the timing model), whether it streams, waits for a whole response, or is queued.

**Serving.** One process, one event loop (the standard asyncio one: under a saturating load uvloop
left thousands of connections waiting minutes to be accepted). The two generation routes are plain
ASGI (:class:`ReplayApp`): FastAPI's request and middleware layers cost more than the rest of a
streamed event. Every other route is a FastAPI application.

**Errors** have OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``): 400 for a
prompt that asks no recorded question or continues no recorded sample (``code``
``"no_recorded_question"`` / ``"no_recorded_sample"``), a request too big for the modelled KV cache
or one continuing a sample past the end of a recording cut at its length limit (both say "maximum
context length", so clients raise their context-length error), or malformed fields; 404 for unknown
routes.

Clients: give :class:`~dynasor_client.Endpoint` ``capabilities=server.capabilities``
(:data:`REPLAY_CAPABILITIES`) rather than letting it detect them: its probes use prompts no trace
records, so detection would find nothing to work with.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from .._serving import HTTPFront, InProcessServer
from ..traces import TraceQuestion, load_traces
from ._engine import NoMatch, ProbeFallback, RecordingEnds, ReplayChoice, ReplayEngine, ReplayPlan
from ._parts import REPLAY_CAPABILITIES, ReplayParts
from ._profiles import GPUProfile, get_profile
from ._timing_drivers import RealtimeDriver, RequestHandle

__all__ = ["REPLAY_CAPABILITIES", "LogprobsShape", "ReplayServer", "create_app", "serve_replay"]

log = logging.getLogger("dynasor_client.replay")

LogprobsShape = Literal["auto", "chat", "legacy"]
Kind = Literal["completions", "chat"]

MAX_N = 1024
#: The GPU profile served by default: Llama-3-8B on one H100 (``"test"`` is the tiny one for tests).
DEFAULT_PROFILE = "llama3-8b-h100-80gb"
MAX_FLUSH_INTERVAL_S = 1.0
MAX_TOP_LOGPROBS = 20
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _RequestError(Exception):
    def __init__(self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def _error(
    message: str, status: int = 400, code: str | None = None, param: str | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_dumps = _ENCODER.encode
#: A string as a JSON string literal (the json module's C implementation).
_quote: Callable[[str], str] = json.encoder.encode_basestring
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _send_error(
    send: Send, message: str, status: int = 400, code: str | None = None, param: str | None = None
) -> None:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": _dumps(body).encode()})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class _Counters:
    __slots__ = ("disconnects", "probes", "rejected", "requests", "streams_open")

    def __init__(self) -> None:
        self.requests = self.rejected = self.probes = self.disconnects = self.streams_open = 0


class ReplayService:
    """The state behind the routes: the engine, the timing driver and the options."""

    def __init__(
        self,
        engine: ReplayEngine,
        driver: RealtimeDriver,
        *,
        model: str,
        logprobs_shape: LogprobsShape = "auto",
        flush_interval_s: float = 0.05,
        record_submissions: bool = False,
    ) -> None:
        if logprobs_shape not in ("auto", "chat", "legacy"):
            raise ValueError(f"logprobs_shape must be 'auto', 'chat' or 'legacy', got {logprobs_shape!r}")
        if flush_interval_s < 0:
            raise ValueError("flush_interval_s must be >= 0")
        self.engine = engine
        self.driver = driver
        self.model = model
        self.logprobs_shape: LogprobsShape = logprobs_shape
        self.min_flush_interval_s = flush_interval_s
        self.max_flush_interval_s = max(MAX_FLUSH_INTERVAL_S, flush_interval_s)
        self.flush_interval_s = flush_interval_s
        """The interval streams use now (see :meth:`adapt_flush_interval`)."""
        self.counters = _Counters()
        self.created = int(time.time())
        self._ids = itertools.count(1)
        self.record_submissions = record_submissions
        self.submissions: list[tuple[str, float, tuple[Hashable, ...], int]] = []
        """With ``record_submissions``: ``(request_id, arrival_time, prompt_keys, output_tokens)``
        of every choice submitted to the driver, in submission order."""

    # ------------------------------------------------------------------ request parsing

    def _text_of(self, kind: str, body: Mapping[str, Any]) -> tuple[str, list[int] | None]:
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _RequestError("'messages' must be a non-empty list", param="messages")
            return "\n".join(_content_text(m) for m in messages), None
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise _RequestError("'prompt' is empty", param="prompt")
            return prompt, None
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return self.engine.vocabulary.decode(prompt), list(prompt)
        if isinstance(prompt, list) and len(prompt) > 1:
            raise _RequestError("the replay server takes one prompt per request", param="prompt")
        raise _RequestError("'prompt' must be a string or a list of token ids", param="prompt")

    # ------------------------------------------------------------------ generation

    async def generate(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one generation request as a raw ASGI call (no framework on this hot path)."""
        self.counters.requests += 1
        try:
            raw = await _read_body(receive)
        except _ClientGone:
            self.counters.disconnects += 1
            return
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        try:
            if not isinstance(body, dict):
                raise _RequestError("the request body must be a JSON object")
            reply = self._start(kind, body, _header(scope, b"x-program-id"))
        except _RequestError as exc:
            self.counters.rejected += 1
            await _send_error(send, str(exc), exc.status, exc.code, exc.param)
            return
        except NoMatch as exc:
            self.counters.rejected += 1
            code = "no_recorded_question" if "no recorded question" in str(exc) else "no_recorded_sample"
            await _send_error(send, str(exc), 400, code)
            return
        except RecordingEnds as exc:
            self.counters.rejected += 1
            await _send_error(send, str(exc), 400, "context_length_exceeded")
            return
        except Exception as exc:  # a bug: answer it as one, keep serving
            log.exception("replay request failed")
            self.counters.rejected += 1
            await _send_error(send, f"internal error of the replay server: {exc!r}", 500)
            return
        await reply.run(receive, send)

    def _start(self, kind: Kind, body: dict[str, Any], program_header: str | None) -> _Reply:
        """Parse, plan and submit a request: the reply, ready to run."""
        for unsupported in ("echo", "suffix"):
            if body.get(unsupported):
                raise _RequestError(
                    f"'{unsupported}' is not supported by the replay server", param=unsupported
                )
        n = _int_field(body, "n", 1, 1, MAX_N)
        max_tokens = _max_tokens(body, kind)
        stop = _stop(body.get("stop"))
        want_logprobs, top = _logprobs_request(body, kind)
        stream = bool(body.get("stream", False))
        options = body.get("stream_options")
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
        return_ids = bool(body.get("return_token_ids", False))
        temperature = body.get("temperature")
        greedy = (
            isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
        )
        text, prompt_ids = self._text_of(kind, body)
        user, seed = body.get("user"), body.get("seed")
        program, remember = self.engine.program_name(
            user if isinstance(user, str) else None,
            program_header,
            seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )
        plan = self.engine.plan(
            text,
            n=n,
            max_tokens=max_tokens,
            stop=stop,
            program=program,
            remember=remember,
            greedy=greedy,
            logprobs=want_logprobs,
        )
        if plan.probe:
            self.counters.probes += 1
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-replay-{next(self._ids)}"
        handles = self._submit(rid, plan)
        shape = self.logprobs_shape
        if shape == "auto":
            shape = "chat" if kind == "chat" else "legacy"
        return _Reply(
            self,
            kind,
            rid,
            plan,
            handles,
            stream=stream,
            want_logprobs=want_logprobs,
            top=top,
            shape=shape,
            return_ids=return_ids,
            prompt_ids=prompt_ids,
            include_usage=include_usage,
        )

    def _submit(self, rid: str, plan: ReplayPlan) -> list[RequestHandle]:
        handles: list[RequestHandle] = []
        try:
            for i, choice in enumerate(plan.choices):
                handle = self.driver.submit(f"{rid}/{i}", plan.prompt_keys, choice.tokens)
                handles.append(handle)
                if self.record_submissions:
                    self.submissions.append(
                        (f"{rid}/{i}", handle.arrival_time, tuple(plan.prompt_keys), choice.tokens)
                    )
        except ValueError as exc:
            for handle in handles:
                handle.abort()
            longest = max(c.tokens for c in plan.choices)
            raise _RequestError(
                f"This model's maximum context length is {self.driver.model.profile.kv_capacity_tokens} "
                f"tokens (the KV cache of GPU profile {self.driver.model.profile.name!r}); this request "
                f"needs {plan.prompt_tokens} prompt + {longest} completion tokens ({exc})",
                code="context_length_exceeded",
            ) from None
        except RuntimeError as exc:  # the driver has stopped: the server is shutting down
            for handle in handles:
                handle.abort()
            raise _RequestError(f"the replay server is shutting down ({exc})", status=503) from None
        return handles

    async def adapt_flush_interval(self, period_s: float = 0.5) -> None:
        """Keep the replay in real time: widen the flush interval while the timing model lags.

        Every ``period_s`` the modelled time that passed is compared with the wall time (over the
        time scale). While it falls short by more than 3% with the modelled GPU busy and streams open,
        the server is the bottleneck and the interval grows by half (up to 1 s); while it keeps up
        within 1% the interval shrinks back towards ``flush_interval_s``. Runs until cancelled.
        """
        scale = self.driver.time_scale
        if scale <= 0:
            return  # as fast as possible: there is no real time to keep up with
        model = self.driver.model
        wall0, clock0, busy0 = time.perf_counter(), model.clock, not model.idle
        while True:
            await asyncio.sleep(period_s)
            wall, clock, busy = time.perf_counter(), model.clock, not model.idle
            if busy and busy0 and self.counters.streams_open and wall > wall0:
                keep_up = (clock - clock0) * scale / (wall - wall0)
                if keep_up < 0.97:
                    self.flush_interval_s = min(self.flush_interval_s * 1.5, self.max_flush_interval_s)
                elif keep_up > 0.99:
                    self.flush_interval_s = max(self.flush_interval_s * 0.8, self.min_flush_interval_s)
            elif not self.counters.streams_open:
                self.flush_interval_s = self.min_flush_interval_s
            wall0, clock0, busy0 = wall, clock, busy

    # ------------------------------------------------------------------ other routes

    def models(self) -> dict[str, Any]:
        profile = self.driver.model.profile
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "dynasor-client-replay",
                    "max_model_len": profile.kv_capacity_tokens,
                }
            ],
        }

    def metrics(self) -> dict[str, Any]:
        figures: dict[str, Any] = dict(self.driver.metrics().as_dict())
        c = self.counters
        figures.update(
            requests_total=c.requests,
            requests_rejected_total=c.rejected,
            probes_total=c.probes,
            client_disconnects_total=c.disconnects,
            streams_open=c.streams_open,
            flush_interval_s=self.flush_interval_s,
            programs=len(self.engine._programs),
            vocabulary=len(self.engine.vocabulary),
        )
        return figures

    def metrics_text(self) -> str:
        text = self.driver.metrics().to_prometheus()
        c = self.counters
        rows = [
            ("requests_total", "counter", "Generation requests received.", c.requests),
            ("requests_rejected_total", "counter", "Requests refused with an error.", c.rejected),
            ("probes_total", "counter", "Probe requests answered.", c.probes),
            ("client_disconnects_total", "counter", "Requests whose client went away early.", c.disconnects),
            ("streams_open", "gauge", "Streaming responses in progress.", c.streams_open),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [
                f"# HELP replay:{name} {help_text}",
                f"# TYPE replay:{name} {kind}",
                f"replay:{name} {value}",
            ]
        return text + "\n".join(lines) + "\n"

    async def pooling(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error("the request body must be a JSON object")
        raw = body.get("input", body.get("prompt"))
        if raw is None and isinstance(body.get("messages"), list):
            raw = "\n".join(_content_text(m) for m in body["messages"])
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            return _error("'input' must be a string or a list of strings (or give 'messages')", param="input")
        data, prompt_tokens = [], 0
        for i, text in enumerate(inputs):
            try:
                scores = self.engine.rewards(text)
            except NoMatch as exc:
                return _error(f"input {i}: {exc}", 400, "no_recorded_sample")
            item: dict[str, Any] = {"index": i, "object": "pooling", "data": [[s] for s in scores.scores]}
            if scores.approximation:
                item["approximation"] = scores.approximation
            data.append(item)
            prompt_tokens += scores.prompt_tokens
        return JSONResponse(
            {
                "id": f"pool-replay-{next(self._ids)}",
                "object": "list",
                "created": int(time.time()),
                "model": self.model,
                "data": data,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens,
                    "completion_tokens": 0,
                },
            }
        )

    async def tokenize(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the request body is not valid JSON")
        text = body.get("prompt", body.get("content")) if isinstance(body, dict) else None
        if not isinstance(text, str):
            return _error(
                "give the text to tokenize as 'prompt' (or 'content'); chat messages are not supported"
            )
        tokens = self.engine.vocabulary.tokenize(text)
        profile = self.driver.model.profile
        return JSONResponse(
            {"tokens": tokens, "count": len(tokens), "max_model_len": profile.kv_capacity_tokens}
        )

    async def detokenize(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the request body is not valid JSON")
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list):
            return _error("give 'tokens' as a list of ids")
        try:
            return JSONResponse({"prompt": self.engine.vocabulary.decode(tokens)})
        except NoMatch as exc:
            return _error(str(exc))


def _content_text(message: Any) -> str:
    if not isinstance(message, Mapping):
        raise _RequestError("each message must be an object with 'role' and 'content'", param="messages")
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    raise _RequestError("message content must be a string or a list of parts", param="messages")


def _int_field(body: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _RequestError(f"'{key}' must be an integer from {low} to {high}, got {value!r}", param=key)
    return value


def _max_tokens(body: Mapping[str, Any], kind: str) -> int | None:
    key = (
        "max_completion_tokens"
        if kind == "chat" and body.get("max_completion_tokens") is not None
        else "max_tokens"
    )
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _RequestError(f"'{key}' must be a positive integer, got {value!r}", param=key)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise _RequestError("'stop' must be a string or a list of strings", param="stop")


def _logprobs_request(body: Mapping[str, Any], kind: str) -> tuple[bool, int]:
    value = body.get("logprobs")
    if kind == "chat":
        top = _int_field(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
        return bool(value) or top > 0, top
    if value is None or value is False:
        return False, 0
    if value is True:
        return True, 0
    if not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise _RequestError(f"'logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}", param="logprobs")
    return True, value


# ---------------------------------------------------------------------------- one reply


class _ClientGone(Exception):
    """The client disconnected before its request was read."""


class _Reply:
    """Sends one plan: as SSE events while the timing model produces it, or as one body at the end.

    Runs in the request's own task; a listener task cancels it the moment the client disconnects,
    and the request is then aborted in the timing model (its KV freed) at once.
    """

    def __init__(
        self,
        service: ReplayService,
        kind: Kind,
        rid: str,
        plan: ReplayPlan,
        handles: list[RequestHandle],
        *,
        stream: bool,
        want_logprobs: bool,
        top: int,
        shape: str,
        return_ids: bool,
        prompt_ids: list[int] | None,
        include_usage: bool,
    ) -> None:
        self.service = service
        self.chat = kind == "chat"
        self.rid = rid
        self.plan = plan
        self.handles = handles
        self.stream = stream
        self.want_logprobs = want_logprobs
        self.top = top
        self.shape = shape
        self.return_ids = return_ids
        self.prompt_ids = prompt_ids
        self.include_usage = include_usage
        self.created = int(time.time())
        self._plain = not (want_logprobs or return_ids)
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        self._head = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{self.created},'
            f'"model":{_quote(service.model)},"choices":['
        )

    def abort(self) -> None:
        for handle in self.handles:
            handle.abort()

    async def run(self, receive: Receive, send: Send) -> None:
        """Send the reply; abort the request if the client goes away first."""
        task = asyncio.current_task()
        done = False

        def gone(_: asyncio.Future[None]) -> None:
            if not done and task is not None:
                task.cancel()

        listener = asyncio.ensure_future(_disconnected(receive))
        listener.add_done_callback(gone)
        counters = self.service.counters
        if self.stream:
            counters.streams_open += 1
        try:
            if self.stream:
                await self._stream(send)
            else:
                await self._whole(send)
            done = True
        except asyncio.CancelledError:
            if not listener.done() or listener.cancelled():
                raise  # cancelled for another reason (shutdown): let it propagate
            counters.disconnects += 1
        except OSError:  # the connection dropped while sending
            counters.disconnects += 1
        finally:
            done = True
            listener.cancel()
            self.abort()
            if self.stream:
                counters.streams_open -= 1

    # ------------------------------------------------------------------ pieces of the body

    def _text(self, index: int, chars: int, start: int, end: int) -> str:
        """The text of pieces ``start:end`` (beginning ``chars`` characters into the output)."""
        choice = self.plan.choices[index]
        text = "".join(choice.pieces[start:end])
        if choice.stop_reason is not None:  # never past the cut before the stop string
            text = text[: max(0, len(choice.text) - chars)]
        return text

    def _part(
        self, index: int, chars: int, start: int, end: int, finished: bool, first: bool, text: str
    ) -> str:
        """One choice of a chunk (or of a whole body, ``first`` and ``finished``) as JSON."""
        choice = self.plan.choices[index]
        finish = f'"{choice.finish_reason}"' if finished else "null"
        if self._plain and (not finished or choice.stop_reason is None):
            if self.chat:
                role = '"role":"assistant",' if first else ""
                key = "message" if not self.stream else "delta"
                return (
                    f'{{"index":{index},"{key}":{{{role}"content":{_quote(text)}}},'
                    f'"logprobs":null,"finish_reason":{finish}}}'
                )
            return f'{{"index":{index},"text":{_quote(text)},"logprobs":null,"finish_reason":{finish}}}'
        part: dict[str, Any] = {"index": index}
        if self.chat:
            content: dict[str, Any] = {"role": "assistant"} if first else {}
            content["content"] = text
            part["delta" if self.stream else "message"] = content
        else:
            part["text"] = text
        part["logprobs"] = self._logprobs(choice, chars, start, end) if self.want_logprobs else None
        part["finish_reason"] = choice.finish_reason if finished else None
        if finished and choice.stop_reason is not None:
            part["stop_reason"] = choice.stop_reason
        if self.return_ids or (self.want_logprobs and choice.logprobs is None):
            part["token_ids"] = self.service.engine.vocabulary.ids(choice.pieces[start:end])
        return _dumps(part)

    def _logprobs(self, choice: ReplayChoice, chars: int, start: int, end: int) -> dict[str, Any] | None:
        if choice.logprobs is None:
            return None
        tokens = choice.pieces[start:end]
        values = choice.logprobs[start:end]
        tops = choice.top_logprobs[start:end] if choice.top_logprobs is not None and self.top else None
        if self.shape == "chat":
            content = []
            for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
                alternatives = tops[i][: self.top] if tops is not None else ()
                content.append(
                    {
                        "token": token,
                        "logprob": value,
                        "bytes": list(token.encode("utf-8")),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
                            for t, lp in alternatives
                        ],
                    }
                )
            return {"content": content}
        return {
            "tokens": list(tokens),
            "token_logprobs": list(values),
            "top_logprobs": [dict(alt[: self.top]) for alt in tops] if tops is not None else None,
            "text_offset": list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=chars))
            if tokens
            else [],
        }

    def _usage(self) -> dict[str, Any]:
        completion = sum(c.num_tokens for c in self.plan.choices)
        prompt = self.plan.prompt_tokens
        cached = self.handles[0].cached_prompt_tokens if self.handles else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def _timings(self) -> list[dict[str, Any]]:
        """The ``replay_timings`` extension field: each choice's modelled times and token counts."""
        return [
            {
                "arrival": h.arrival_time,
                "first_token": h.first_token_time,
                "finish": h.finish_time,
                "prompt_tokens": h.prompt_tokens,
                "output_tokens": h.output_tokens,
                "cached_prompt_tokens": h.cached_prompt_tokens,
            }
            for h in self.handles
        ]

    def _extra(self, fields: dict[str, Any]) -> bytes:
        """A chunk without choice content (usage, prompt token ids)."""
        chunk = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.service.model,
            **fields,
        }
        return f"data: {_dumps(chunk)}\n\n".encode()

    # ------------------------------------------------------------------ whole body

    async def _whole(self, send: Send) -> None:
        driver = self.service.driver
        for handle in self.handles:
            while not handle.done:
                await handle.wait(handle.output_tokens - 1)
                if not driver.running and not handle.done:
                    await _send_error(send, "the replay server is shutting down", 503)
                    return
        parts = []
        for i, choice in enumerate(self.plan.choices):
            parts.append(self._part(i, 0, 0, len(choice.pieces), True, True, choice.text))
        obj = "chat.completion" if self.chat else "text_completion"
        extra = (
            f',"prompt_token_ids":{_dumps(self.prompt_ids)}' if self.return_ids and self.prompt_ids else ""
        )
        body = (
            f'{{"id":"{self.rid}","object":"{obj}","created":{self.created},'
            f'"model":{_quote(self.service.model)},"choices":[{",".join(parts)}],'
            f'"usage":{_dumps(self._usage())},"replay_timings":{_dumps(self._timings())}{extra}}}'
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ streaming

    async def _stream(self, send: Send) -> None:
        """SSE events: every token due since the last flush, all choices together, in one event."""
        handles, choices = self.handles, self.plan.choices
        count = len(choices)
        sent = [0] * count
        chars = [0] * count
        first = [True] * count
        open_ = list(range(count))
        driver = self.service.driver
        service = self.service
        loop = asyncio.get_running_loop()
        last = -1e9
        began, base = 0.0, 0  # time and tokens of the first event, for the lead's token rate
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if self.return_ids and self.prompt_ids is not None:
            await send(_body(self._extra({"choices": [], "prompt_token_ids": self.prompt_ids})))
        while open_:
            lead = handles[open_[0]]
            interval = service.flush_interval_s
            if interval:  # at most one event per interval: the tokens due meanwhile go together
                now = loop.time()
                pause = last + interval - now
                # ... except near the end, so that the last token is never held back.
                if pause > 0 and lead.output_tokens - lead.generated > self._tokens_within(
                    pause, began, base
                ):
                    await asyncio.sleep(pause)
            if lead.generated <= sent[open_[0]] and not lead.done:
                await lead.wait(sent[open_[0]])
            parts = []
            still = []
            for i in open_:
                handle = handles[i]
                if handle.aborted:
                    return
                done = handle.finished
                pieces = len(choices[i].pieces)
                upto = pieces if done else min(handle.generated, pieces)
                if upto > sent[i] or done:
                    text = self._text(i, chars[i], sent[i], upto)
                    parts.append(self._part(i, chars[i], sent[i], upto, done, first[i], text))
                    first[i] = False
                    sent[i] = upto
                    chars[i] += len(text)
                if not done:
                    still.append(i)
            open_ = still
            if parts:
                last = loop.time()
                if not began:
                    began, base = last, lead.generated
                await send(_body(f"{self._head}{','.join(parts)}]}}\n\n".encode()))
            if open_ and not driver.running:
                return
        if self.include_usage:
            await send(
                _body(self._extra({"choices": [], "usage": self._usage(), "replay_timings": self._timings()}))
            )
        await send(_body(b"data: [DONE]\n\n"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _tokens_within(self, seconds: float, began: float, base: int) -> float:
        """About how many tokens the lead choice gains in ``seconds`` of wall time (plus one)."""
        driver = self.service.driver
        model, scale = driver.model, driver.time_scale
        done = model.iteration
        if scale > 0 and done >= 2:  # the modelled GPU's latest iteration time, in wall seconds
            step = (model.iteration_end(done - 1) - model.iteration_end(done - 2)) * scale
            return seconds / step + 1 if step > 0 else math.inf
        if not began:
            return 1.0
        elapsed = asyncio.get_running_loop().time() - began
        lead = self.handles[0]
        return (lead.generated - base) / max(elapsed, 1e-9) * seconds + 1


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


# ---------------------------------------------------------------------------- the app


class ReplayApp:
    """The server's ASGI application: generation routes served directly, the rest by FastAPI.

    ``POST /v1/completions`` and ``POST /v1/chat/completions`` bypass the framework (its request
    and middleware layers cost more than the rest of a streamed token); every other route is the
    FastAPI application :attr:`fastapi`.
    """

    def __init__(self, service: ReplayService) -> None:
        self.service = service
        self.fastapi = _fastapi_app(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            kind = _GENERATION_ROUTES.get(scope["path"])
            if kind is not None:
                await self.service.generate(kind, scope, receive, send)
                return
        await self.fastapi(scope, receive, send)


_GENERATION_ROUTES: dict[str, Kind] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


def create_app(service: ReplayService) -> ReplayApp:
    """The ASGI application serving ``service`` (see :class:`ReplayApp`)."""
    return ReplayApp(service)


def _fastapi_app(service: ReplayService) -> FastAPI:
    app = FastAPI(title="dynasor-client replay server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(service.models())

    @app.post("/pooling")
    async def pooling(request: Request) -> Response:
        return await service.pooling(request)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return await service.tokenize(request)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return await service.detokenize(request)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if request.query_params.get("format") == "json":
            return JSONResponse(service.metrics())
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(f"no route {request.method} {request.url.path} on the replay server", 404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(f"{request.method} is not allowed on {request.url.path}", 405)

    return app


# ---------------------------------------------------------------------------- running it


def _questions(traces: str | Path | Sequence[TraceQuestion]) -> list[TraceQuestion]:
    if isinstance(traces, str | Path):
        return load_traces(traces)
    return list(traces)


def _model_name(traces: str | Path | Sequence[TraceQuestion], model: str | None) -> str:
    if model:
        return model
    if isinstance(traces, str | Path):
        return f"replay-{Path(traces).stem}"
    return "replay"


def _build_service(
    traces: str | Path | Sequence[TraceQuestion],
    *,
    profile: str | GPUProfile,
    time_scale: float,
    seed: int,
    model: str | None,
    logprobs_shape: LogprobsShape,
    probe_fallback: ProbeFallback,
    flush_interval_s: float,
    record_submissions: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> ReplayService:
    """The engine, timing driver (on ``clock``) and service behind a replay server's routes.

    Shared by :class:`ReplayServer` and :class:`~._virtual.InProcessReplay`; see the former for the
    arguments.
    """
    gpu = get_profile(profile)
    engine = ReplayEngine(_questions(traces), seed=seed, probe_fallback=probe_fallback)
    driver = RealtimeDriver(gpu, time_scale=time_scale, clock=clock)
    return ReplayService(
        engine,
        driver,
        model=_model_name(traces, model),
        logprobs_shape=logprobs_shape,
        flush_interval_s=flush_interval_s,
        record_submissions=record_submissions,
    )


class ReplayServer(ReplayParts, HTTPFront):
    """The replay server on a free port of ``host``, in this process's event loop.

    ``async with ReplayServer("traces.jsonl", profile="test", time_scale=0.1) as server:`` then
    point clients at ``server.base_url`` (give :class:`~dynasor_client.Endpoint`
    ``capabilities=server.capabilities``). Leaving the block stops accepting requests, ends the
    open ones and stops the timing driver.

    Args:
        traces: a traces file or already loaded questions.
        profile: the GPU profile (:func:`~._profiles.get_profile`: a built-in name, a JSON file,
            or a :class:`~._profiles.GPUProfile`); default :data:`DEFAULT_PROFILE`.
        time_scale: wall seconds per modelled second (0: as fast as possible).
        seed: the server seed of every draw.
        host, port: where to listen (port None: a free one).
        model: the model name served (default ``replay-<traces file stem>``).
        logprobs_shape, probe_fallback, flush_interval_s: see the module and engine docs.
        record_submissions: keep every submitted choice in ``service.submissions`` (see the module
            docs, ``replay_timings``).
    """

    def __init__(
        self,
        traces: str | Path | Sequence[TraceQuestion],
        *,
        profile: str | GPUProfile = DEFAULT_PROFILE,
        time_scale: float = 1.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int | None = None,
        model: str | None = None,
        logprobs_shape: LogprobsShape = "auto",
        probe_fallback: ProbeFallback = "explicit",
        flush_interval_s: float = 0.05,
        log_level: str = "warning",
        record_submissions: bool = False,
    ) -> None:
        self.service = _build_service(
            traces,
            profile=profile,
            time_scale=time_scale,
            seed=seed,
            model=model,
            logprobs_shape=logprobs_shape,
            probe_fallback=probe_fallback,
            flush_interval_s=flush_interval_s,
            record_submissions=record_submissions,
        )
        self._serve(self.service)
        self.host = host
        self._http = InProcessServer(
            self.app, host=host, port=port, name="replay server", log_level=log_level
        )
        self._adapter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._http.started:
            raise RuntimeError("this ReplayServer was already started")
        await self.driver.__aenter__()
        try:
            await self._http.start()
        except BaseException:
            await self.driver.close()
            raise
        self._adapter = asyncio.create_task(self.service.adapt_flush_interval(), name="replay-flush-interval")

    async def stop(self) -> None:
        if self._adapter is not None:
            self._adapter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adapter
        await self._http.stop()
        await self.driver.close()


def serve_replay(
    traces: str | Path | Sequence[TraceQuestion],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    profile: str | GPUProfile = DEFAULT_PROFILE,
    time_scale: float = 1.0,
    seed: int = 0,
    **options: Any,
) -> None:
    """Run the replay server until interrupted (the ``serve-replay`` command)."""

    async def main() -> None:
        server = ReplayServer(
            traces, profile=profile, time_scale=time_scale, seed=seed, host=host, port=port, **options
        )
        async with server:
            print(
                f"Replaying {len(server.engine.questions)} questions as {server.model!r} at "
                f"{server.base_url} (GPU profile {server.profile.name!r}, time scale {time_scale:g}, "
                f"seed {seed}); Ctrl-C stops",
                flush=True,
            )
            await server._http.serve_until_interrupted()

    # The standard event loop, not uvloop: under a saturating load uvloop starves the listening
    # socket (thousands of connections wait minutes to be accepted), asyncio's loop does not.
    asyncio.run(main())
