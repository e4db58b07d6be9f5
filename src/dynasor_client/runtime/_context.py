"""The program context under the runtime: every request goes through the scheduler and the budget."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..budget import Pool
from ..endpoints import Endpoint, EndpointPool, Generation, SamplingParams, Usage
from ..program import CertaindexPoint, ProgramContext, StopReason, TokenKind
from ._states import ProgramRecord

if TYPE_CHECKING:
    from ._runtime import Runtime


class RuntimeContext(ProgramContext):
    """The :class:`~dynasor_client.program.ProgramContext` of one program of a :class:`Runtime`:
    its slots come from the scheduler, its allowance from the budget manager, its deadline from its
    record; what it does is counted and logged by the runtime."""

    def __init__(self, runtime: Runtime, record: ProgramRecord, backend: Endpoint | EndpointPool) -> None:
        self.record = record
        self._runtime = runtime
        super().__init__(backend, deadline=record.deadline, program_id=record.program_id)
        self.prompt_scale = runtime.prompt_scale  # one upstream, one tokenizer: learnt together
        self.started = record.arrival

    def clock(self) -> float:
        return self._runtime.clock()

    def request_params(self, params: SamplingParams | None) -> SamplingParams | None:
        runtime = self._runtime
        if not runtime.priority_hints:
            return params
        # vLLM --scheduling-policy priority: lower is sooner.
        hint = int(max(-(2**31), min(2**31 - 1, runtime.policy.key(self.record, runtime.clock()))))
        params = params or SamplingParams()
        return dataclasses.replace(params, extra_body={**params.extra_body, "priority": hint})

    @contextlib.asynccontextmanager
    async def granted(self, n: int) -> AsyncIterator[None]:
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

    def hold(self, tokens: int) -> int:
        budget, account = self._runtime.budget, self.record.account
        return budget.hold(account, tokens) if budget.limited(account) else 0

    def observed(self, generation: Generation, elapsed_s: float) -> None:
        # Timed on the runtime's clock, like deadlines (Generation.latency_s is wall time, which
        # does not follow a virtual-time loop).
        self._runtime.observe_speed(generation, elapsed_s)

    def charge(self, kind: TokenKind, usage: Usage, *, estimate: int | None = None) -> None:
        super().charge(kind, usage, estimate=estimate)
        self._runtime.charge(self.record, kind, usage)

    def budgeted(self) -> bool:
        return self._runtime.budget.limited(self.record.account)

    async def fit(
        self, kind: TokenKind, n: int, max_tokens: int | None, prompt_tokens: int
    ) -> tuple[int, int | None, int]:
        budget, account = self._runtime.budget, self.record.account
        while (fitted := budget.fit(account, kind, n, max_tokens, prompt_tokens, wait=True)) is None:
            await budget.settled()
        return fitted

    def release(self, held: int) -> None:
        if held:
            self._runtime.budget.release(self.record.account, held)

    def share(self, pool: Pool) -> None:
        """Reserve and charge this program's tokens against ``pool`` too (a proxy key's budget)."""
        self.record.account.pools.append(pool)

    def tokens_left(self) -> int | None:
        return self._runtime.budget.tokens_left(self.record.account)

    def saturated(self) -> bool:
        return self._runtime.scheduler.saturated()

    def budget_stop(self) -> StopReason | None:
        return self._runtime.budget.stop_reason(self.record.account)

    def reported(self, point: CertaindexPoint) -> None:
        runtime = self._runtime
        account = self.record.account
        account.certainty, account.steps = point.value, len(self.certaindex)
        runtime.events.emit(
            runtime.clock(), self.program_id, "step", certaindex=point.value,
            observations=point.observations, tokens=point.tokens, answer=point.answer,
        )  # fmt: skip
