"""The state behind the replay server's routes: engine, timing driver, options, counters and metrics.

:class:`ReplayService` serves a generation request end to end as a raw ASGI call (parse it with
:mod:`._requests`, plan it with the engine, submit its choices to the timing driver, hand it to a
:class:`~._replies.Reply`) and answers the other routes' validated requests. With
``record_submissions=True`` it keeps, in :attr:`ReplayService.submissions`, every choice it
submitted to the driver as ``(request_id, arrival_time, prompt_keys, output_tokens)``: enough to
replay the same workload in a :class:`~._timing_drivers.VirtualClockSimulator`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Hashable
from typing import Any, Literal

from prometheus_client import generate_latest
from starlette.types import Receive, Scope, Send

from ._capability_probes import CapabilityProbes
from ._engine import NoMatch, RecordingEnds, ReplayEngine
from ._metrics import service_registry
from ._plans import ReplayPlan
from ._replies import Kind, Reply, send_error
from ._requests import (
    ChatRequest,
    ClientGone,
    CompletionRequest,
    DetokenizeRequest,
    PoolingRequest,
    RequestError,
    TokenizeRequest,
    header,
    parse,
    read_body,
)
from ._timing_drivers import RealtimeDriver, RequestHandle

__all__ = ["Counters", "LogprobsShape", "ReplayService"]

log = logging.getLogger("dynasor_client.replay")

LogprobsShape = Literal["auto", "chat", "legacy"]

MAX_FLUSH_INTERVAL_S = 1.0


class Counters:
    """The server's own counters (``/metrics``: ``replay:...``)."""

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
        self.counters = Counters()
        self.capability_probes = CapabilityProbes(seed=engine.seed)
        self.registry = service_registry(self)
        """The Prometheus registry of this service's figures (``GET /metrics``)."""
        self.created = int(time.time())
        self._ids = itertools.count(1)
        self.record_submissions = record_submissions
        self.submissions: list[tuple[str, float, tuple[Hashable, ...], int]] = []
        """With ``record_submissions``: ``(request_id, arrival_time, prompt_keys, output_tokens)``
        of every choice submitted to the driver, in submission order."""

    # ------------------------------------------------------------------ generation

    async def generate(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one generation request as a raw ASGI call (no framework on this hot path)."""
        self.counters.requests += 1
        try:
            raw = await read_body(receive)
        except ClientGone:
            self.counters.disconnects += 1
            return
        try:
            request: ChatRequest | CompletionRequest = (
                parse(ChatRequest, raw) if kind == "chat" else parse(CompletionRequest, raw)
            )
            reply = self._start(kind, request, header(scope, b"x-program-id"))
        except RequestError as exc:
            self.counters.rejected += 1
            await send_error(send, str(exc), exc.status, exc.code, exc.param)
            return
        except NoMatch as exc:
            self.counters.rejected += 1
            code = "no_recorded_question" if "no recorded question" in str(exc) else "no_recorded_sample"
            await send_error(send, str(exc), 400, code)
            return
        except RecordingEnds as exc:
            self.counters.rejected += 1
            await send_error(send, str(exc), 400, "context_length_exceeded")
            return
        except Exception as exc:  # a bug: answer it as one, keep serving
            log.exception("replay request failed")
            self.counters.rejected += 1
            await send_error(send, f"internal error of the replay server: {exc!r}", 500)
            return
        await reply.run(receive, send)

    def _start(
        self, kind: Kind, request: ChatRequest | CompletionRequest, program_header: str | None
    ) -> Reply:
        """Plan and submit a validated request: the reply, ready to run."""
        want_logprobs, top = request.logprobs_wanted
        prompt_ids: list[int] | None = None
        if isinstance(request, ChatRequest):
            text = request.text
        elif isinstance(request.prompt, str):
            text = request.prompt
        else:  # token ids of this server's vocabulary
            text, prompt_ids = self.engine.vocabulary.decode(request.prompt), list(request.prompt)
        program, remember = self.engine.program_name(
            request.program_user, program_header, request.program_seed
        )
        options: dict[str, Any] = {
            "n": request.choices,
            "max_tokens": request.token_limit,
            "stop": request.stops,
            "program": program,
            "remember": remember,
            "greedy": request.greedy,
            "logprobs": want_logprobs,
        }
        try:
            plan = self.engine.plan(text, **options)
        except NoMatch:
            if not self.capability_probes.asks(text):
                raise
            plan = self.capability_probes.plan(text, **options)
        if plan.probe:
            self.counters.probes += 1
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-replay-{next(self._ids)}"
        handles = self._submit(rid, plan)
        shape = self.logprobs_shape
        if shape == "auto":
            shape = "chat" if kind == "chat" else "legacy"
        return Reply(
            self,
            kind,
            rid,
            plan,
            handles,
            stream=request.stream,
            want_logprobs=want_logprobs,
            top=top,
            shape=shape,
            return_ids=request.return_token_ids,
            prompt_ids=prompt_ids,
            include_usage=request.include_usage,
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
            raise RequestError(
                f"This model's maximum context length is {self.driver.model.profile.kv_capacity_tokens} "
                f"tokens (the KV cache of GPU profile {self.driver.model.profile.name!r}); this request "
                f"needs {plan.prompt_tokens} prompt + {longest} completion tokens ({exc})",
                code="context_length_exceeded",
            ) from None
        except RuntimeError as exc:  # the driver has stopped: the server is shutting down
            for handle in handles:
                handle.abort()
            raise RequestError(f"the replay server is shutting down ({exc})", status=503) from None
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

    def metrics_text(self) -> bytes:
        """The figures in Prometheus text exposition (:mod:`._metrics`)."""
        return generate_latest(self.registry)

    def pooling(self, request: PoolingRequest) -> dict[str, Any]:
        """Reward scores in vLLM's pooling shape (:class:`RequestError` for a refused input)."""
        data, prompt_tokens = [], 0
        for i, text in enumerate(request.texts):
            try:
                scores = self.engine.rewards(text)
            except NoMatch as exc:
                raise RequestError(f"input {i}: {exc}", code="no_recorded_sample") from None
            item: dict[str, Any] = {"index": i, "object": "pooling", "data": [[s] for s in scores.scores]}
            if scores.approximation:
                item["approximation"] = scores.approximation
            data.append(item)
            prompt_tokens += scores.prompt_tokens
        return {
            "id": f"pool-replay-{next(self._ids)}",
            "object": "list",
            "created": int(time.time()),
            "model": self.model,
            "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
        }

    def tokenize(self, request: TokenizeRequest) -> dict[str, Any]:
        tokens = self.engine.vocabulary.tokenize(request.text)
        profile = self.driver.model.profile
        return {"tokens": tokens, "count": len(tokens), "max_model_len": profile.kv_capacity_tokens}

    def detokenize(self, request: DetokenizeRequest) -> dict[str, Any]:
        try:
            return {"prompt": self.engine.vocabulary.decode(request.tokens)}
        except NoMatch as exc:
            raise RequestError(str(exc)) from None
