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

**Replies** (logprobs, usage, the ``replay_timings`` extension field, streaming and its flush
interval, client disconnects): :mod:`._replies`. **Request bodies** and how a malformed one is
refused: :mod:`._requests`. **State** (engine, timing driver, counters, ``record_submissions``):
:mod:`._service`; ``/metrics``: :mod:`._metrics`.

**Rewards** (``POST /pooling``, vLLM's shape for process reward models): the body has ``input`` (or
``prompt``: a string or a list of strings) or ``messages``; each input is a question followed by a
prefix of one of its samples. The answer is ``{"object": "list", "data": [{"index": i,
"object": "pooling", "data": [[score], ...]}], "usage": ...}`` with one ``[score]`` per reasoning step
(:meth:`~._engine.ReplayEngine.rewards`): recorded ``step_rewards`` when the trace has them, else the
sample's one outcome ``reward`` for every prefix of it, an approximation that each such item states
in its ``"approximation"`` field.

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

**Capability probes.** An :class:`~dynasor_client.Endpoint` created without ``capabilities=``
probes the server on first use with prompts no trace records; the server answers exactly those
from a built-in recording (:mod:`._capability_probes`), so detection finds
:data:`REPLAY_CAPABILITIES`. Passing ``capabilities=server.capabilities`` saves those requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .._serving import HTTPFront, InProcessServer
from ..traces import TraceQuestion, load_traces
from ._engine import ProbeFallback, ReplayEngine
from ._metrics import CONTENT_TYPE
from ._parts import REPLAY_CAPABILITIES, ReplayParts
from ._profiles import GPUProfile, get_profile
from ._replies import Kind, error_body
from ._requests import DetokenizeRequest, PoolingRequest, RequestError, TokenizeRequest, parse
from ._service import LogprobsShape, ReplayService
from ._timing_drivers import RealtimeDriver

__all__ = [
    "REPLAY_CAPABILITIES",
    "LogprobsShape",
    "ReplayApp",
    "ReplayServer",
    "ReplayService",
    "create_app",
    "serve_replay",
]

#: The GPU profile served by default: Llama-3-8B on one H100 (``"test"`` is the tiny one for tests).
DEFAULT_PROFILE = "llama3-8b-h100-80gb"


def _error(
    message: str, status: int = 400, code: str | None = None, param: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, status, code, param), status_code=status)


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
        try:
            return JSONResponse(service.pooling(parse(PoolingRequest, await request.body())))
        except RequestError as exc:
            return _error(str(exc), exc.status, exc.code, exc.param)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        try:
            return JSONResponse(service.tokenize(parse(TokenizeRequest, await request.body())))
        except RequestError as exc:
            return _error(str(exc), exc.status, exc.code, exc.param)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        try:
            return JSONResponse(service.detokenize(parse(DetokenizeRequest, await request.body())))
        except RequestError as exc:
            return _error(str(exc), exc.status, exc.code, exc.param)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if request.query_params.get("format") == "json":
            return JSONResponse(service.metrics())
        return Response(service.metrics_text(), media_type=CONTENT_TYPE)

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
    point clients at ``server.base_url`` (an :class:`~dynasor_client.Endpoint` detects
    :attr:`capabilities` itself; passing ``capabilities=server.capabilities`` saves its probes).
    Leaving the block stops accepting requests, ends the open ones and stops the timing driver.

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
