"""The program context under the runtime: every request goes through the scheduler and the budget."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ..algorithms._program import (
    CertaindexPoint,
    StopReason,
    TokenKind,
    TokenUsage,
    rule_stop_reason,
    send,
)
from ..certainty import Observations, StopRule
from ..endpoints import Endpoint, EndpointPool, Generation, Message, Prompt, SamplingParams, Usage
from ._states import ProgramRecord

if TYPE_CHECKING:
    from ._runtime import Runtime


class RuntimeContext:
    """:class:`~dynasor_client.algorithms.ProgramContext` for one program of a :class:`Runtime`."""

    def __init__(self, runtime: Runtime, record: ProgramRecord, backend: Endpoint | EndpointPool) -> None:
        self.program_id = record.program_id
        # Chunked algorithms drive an Endpoint directly: a pool gives the program's pinned replica.
        self.endpoint: Endpoint = (
            backend.endpoint_for(record.program_id) if isinstance(backend, EndpointPool) else backend
        )
        self._backend = backend  # generate() goes through the pool, which fails over
        self.usage = TokenUsage()
        self.certaindex: list[CertaindexPoint] = []
        self.rule: StopRule | None = None
        self.record = record
        self._runtime = runtime

    async def generate(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        n: int = 1,
        params: SamplingParams | None = None,
        kind: TokenKind = TokenKind.GENERATED,
    ) -> Generation:
        runtime = self._runtime
        if runtime.priority_hints:  # vLLM --scheduling-policy priority: lower is sooner
            hint = int(max(-(2**31), min(2**31 - 1, runtime.policy.key(self.record, runtime.clock()))))
            params = params or SamplingParams()
            params = dataclasses.replace(params, extra_body={**params.extra_body, "priority": hint})
        async with self.request_slot(n):
            started = runtime.clock()
            generation = await send(self._backend, self.program_id, prompt, messages, n, params)
            elapsed = runtime.clock() - started
        self.charge(kind, generation.usage)
        # Timed on the runtime's clock, like deadlines (Generation.latency_s is wall time, which
        # does not follow a virtual-time loop).
        runtime.observe_speed(generation, elapsed)
        return generation

    @contextlib.asynccontextmanager
    async def request_slot(self, n: int = 1) -> AsyncIterator[None]:
        if n < 1:
            raise ValueError(f"a request has at least one sequence, got n={n}")
        scheduler, record = self._runtime.scheduler, self.record
        record.seconds_per_token = self._runtime.seconds_per_token
        granted = scheduler.acquire(record, n)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                scheduler.release(n)  # granted just as it was cancelled: give the slot back
            raise
        record.requests += 1
        try:
            yield
        finally:
            scheduler.release(n)

    def charge(self, kind: TokenKind, usage: Usage) -> None:
        self.usage.add(kind, usage)
        self._runtime.charge(self.record, kind, usage)

    def tokens_left(self) -> int | None:
        return self._runtime.budget.tokens_left(self.record.account)

    def seconds_left(self) -> float | None:
        deadline = self.record.deadline
        return None if deadline is None else deadline - self._runtime.clock()

    def saturated(self) -> bool:
        return self._runtime.scheduler.saturated()

    def bind(self, rule: StopRule) -> None:
        self.rule = rule

    def report(self, value: float, observations: int, answer: str | None = None) -> None:
        runtime = self._runtime
        elapsed = runtime.clock() - self.record.arrival
        self.certaindex.append(CertaindexPoint(observations, value, self.usage.total, elapsed, answer))
        account = self.record.account
        account.certainty, account.steps = value, len(self.certaindex)
        runtime.events.emit(
            runtime.clock(), self.program_id, "step",
            certaindex=value, observations=observations, tokens=self.usage.total, answer=answer,
        )  # fmt: skip

    def stop_reason(self, obs: Observations) -> StopReason | None:
        seconds = self.seconds_left()
        if seconds is not None and seconds <= 0:
            return StopReason.DEADLINE
        if self.rule is not None and (reason := rule_stop_reason(self.rule, obs)) is not None:
            return reason
        return self._runtime.budget.stop_reason(self.record.account)
