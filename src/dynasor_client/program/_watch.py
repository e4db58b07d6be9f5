"""A watched trace under a program's context: scheduled, reserved against the budget, billed.

:meth:`ProgramContext.watch_trace` is :meth:`Endpoint.watch <dynasor_client.endpoints.Endpoint.watch>`
for programs: the request waits for its slot like any other (the runtime's scheduler), reserves its
``max_tokens`` (shrunk to what the budget has left), carries the program's id, and when the trace
ends, however it ends (ran out, closed by its monitor or by the program, cancelled by the deadline,
failed), what it generated is charged to the program as ``kind``, exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from .._log import program_scope
from ..endpoints import Message, Monitor, Prompt, SamplingParams, Trace, prompt_estimate
from ._types import TokenKind

if TYPE_CHECKING:
    from ._context import ProgramContext


@contextlib.asynccontextmanager
async def watch_trace(
    context: ProgramContext,
    prompt: Prompt | None = None,
    *,
    messages: Sequence[Message] | None = None,
    params: SamplingParams | None = None,
    monitor: Monitor | None = None,
    kind: TokenKind = TokenKind.GENERATED,
) -> AsyncIterator[Trace]:
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt= or messages=")
    params = context.request_params(params) or SamplingParams()
    estimate = prompt_estimate(prompt, messages)
    async with context.request_slot(max_tokens=params.max_tokens, prompt_tokens=estimate, kind=kind) as most:
        if most != params.max_tokens:
            params = dataclasses.replace(params, max_tokens=most)
        trace: Trace | None = None
        started = context.clock()
        try:
            watching = context.endpoint.watch(prompt, messages=messages, params=params, monitor=monitor)
            with program_scope(context.program_id):  # X-Program-Id: one program, one replica
                async with watching as trace:
                    yield trace
        finally:
            if trace is not None:
                context.charge(kind, trace.usage, estimate=estimate)
        # The scheduler's decoding-speed estimate learns from watched traces as from any response.
        context.observed(trace.generation(), context.clock() - started)
