"""The runtime: many reasoning programs over shared backends, one token budget, their deadlines.

``async with Runtime(endpoint, token_budget=...) as runtime:`` then ``runtime.submit(program)``
(online: returns a :class:`ProgramHandle` at once) or ``await runtime.run_batch(programs)``. A
program is an algorithm bound to its query: ``lambda ctx: self_consistency(q, context=ctx)`` (or
:func:`as_program`). Every program runs in a task of the runtime's task group, so none outlives
it; leaving the block stops accepting programs and drains the running ones.

Time is the event loop's clock (``loop.time()``): under the replay engine's virtual-time loop the
same runtime, scheduler and policies run in simulated time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._exceptions import ProgramCancelled, RuntimeClosed
from .._log import new_id, program_scope
from ..budget import AdmissionPolicy, AdmissionRequest, BudgetManager, Load
from ..endpoints import Endpoint, EndpointPool, Generation, RouteEvent, Usage
from ..program import Program, ProgramResult, PromptScale, StopReason, TokenKind, TokenUsage, run_program
from ._context import RuntimeContext

if TYPE_CHECKING:
    from ._batch import BatchBackend, BatchResult
from ._events import EventLog, RuntimeMetrics
from ._policies import SchedulingPolicy, dynasor
from ._scheduler import Scheduler
from ._states import ProgramRecord, ProgramState, TokenHistory

log = logging.getLogger("dynasor_client.runtime")

_SPEED_PRIOR_S = 0.02  # seconds per generated token per sequence before anything is measured
_THROUGHPUT_WINDOW_S = 30.0


class ProgramHandle:
    """A submitted program: ``await handle`` for its :class:`ProgramResult` (raises its error if it
    failed, :class:`ProgramCancelled` if cancelled); ``handle.cancel()`` stops it and aborts its
    in-flight requests."""

    __slots__ = ("_future", "record")

    def __init__(self, record: ProgramRecord, future: asyncio.Future[ProgramResult]) -> None:
        self.record, self._future = record, future

    def __repr__(self) -> str:
        return f"ProgramHandle({self.program_id!r}, {self.state.value})"

    @property
    def program_id(self) -> str:
        return self.record.program_id

    @property
    def state(self) -> ProgramState:
        return self.record.state

    def __await__(self) -> Generator[Any, None, ProgramResult]:
        # Shielded: a cancelled awaiter must not cancel the program for everyone else.
        return asyncio.shield(self._future).__await__()

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> ProgramResult:
        return self._future.result()

    def add_done_callback(self, callback: Callable[[ProgramHandle], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    def cancel(self) -> bool:
        """Cancel the program (its in-flight HTTP requests are closed); False if it already ended."""
        task = self.record.task
        if self._future.done() or task is None:
            return False
        self.record.cancel_requested = True
        return task.cancel()


def _retrieve(future: asyncio.Future[ProgramResult]) -> None:
    if not future.cancelled():
        future.exception()  # failures are logged and counted; nobody has to await a handle


class Runtime:
    """Runs reasoning programs concurrently under a global token budget and deadlines (module docs).

    Args:
        endpoint: an :class:`Endpoint` or an :class:`EndpointPool` every program shares.
        token_budget: tokens all programs together may spend (shortcut for ``budget=``).
        program_tokens: each program's allowance (shortcut for ``budget=``).
        budget: a :class:`BudgetManager` (pressure, reallocation, hopeless cut, counted kinds).
        policy: the scheduling policy (default :func:`~._policies.dynasor`).
        window: sequences in flight at most (None: send everything at once, the naive client).
        gang: dispatch a program's concurrent requests together.
        admission: an admission policy (default: admit every program).
        priority_hints: send each request's policy key as vLLM's ``priority`` (for servers run
            with ``--scheduling-policy priority``); off by default.
        events: the :class:`EventLog` (default: the last 100,000 events in memory).
        expected_tokens: the prior for a program's total tokens until programs have finished.
    """

    def __init__(
        self,
        endpoint: Endpoint | EndpointPool,
        *,
        token_budget: int | None = None,
        program_tokens: int | None = None,
        budget: BudgetManager | None = None,
        policy: SchedulingPolicy | None = None,
        window: int | None = 64,
        gang: bool = True,
        admission: AdmissionPolicy | None = None,
        priority_hints: bool = False,
        events: EventLog | None = None,
        expected_tokens: float = 2000.0,
    ) -> None:
        if budget is not None and (token_budget is not None or program_tokens is not None):
            raise ValueError("give budget= or token_budget=/program_tokens=, not both")
        self.backend = endpoint
        self.budget = budget or BudgetManager(token_budget, program_tokens)
        self.prompt_scale = PromptScale()  # prompt estimates' error, learnt by its programs
        self.policy = policy or dynasor()
        self.admission = admission
        self.priority_hints = priority_hints
        self.events = events if events is not None else EventLog()
        self.metrics = RuntimeMetrics()
        self.scheduler = Scheduler(
            self.policy, window=window, gang=gang, clock=self.clock, check=self._may_dispatch
        )
        self.seconds_per_token = _SPEED_PRIOR_S
        self._expected_prior = expected_tokens
        self._finished_tokens = TokenHistory(200)
        self._throughput: collections.deque[tuple[float, int]] = collections.deque()
        self._active: dict[str, ProgramRecord] = {}
        self._group: asyncio.TaskGroup | None = None
        self._open = False
        self.last_batch: Any = None  # the BatchResult of the latest run_batch, also while it runs

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Runtime:
        if self._group is not None:
            raise RuntimeError("a Runtime can be started only once")
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._open = True
        if isinstance(self.backend, EndpointPool):
            self.backend.listeners.append(self._routed)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False  # stop accepting; the task group drains the running programs
        assert self._group is not None
        try:
            await self._group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # Programs never raise into the group, so this only wraps the block's own error:
            # let that propagate unwrapped.
            if exc is None or any(e is not exc for e in group.exceptions):
                raise
        finally:
            if isinstance(self.backend, EndpointPool) and self._routed in self.backend.listeners:
                self.backend.listeners.remove(self._routed)
            self.events.close()

    def _routed(self, event: RouteEvent) -> None:
        """A pool's routing event as a runtime event: ``routed`` (a program placed on a replica, or
        moved off a failed one) for this runtime's programs; ``replica_down`` / ``replica_up`` with
        an empty program id."""
        if event.program_id is not None and event.program_id not in self._active:
            return  # another runtime's program, or a request outside any program
        program = event.program_id or ""
        self.events.emit(self.clock(), program, event.kind, replica=event.replica, **event.data)

    def clock(self) -> float:
        return asyncio.get_running_loop().time()

    def cancel_all(self) -> int:
        """Cancel every running program; returns how many."""
        records = list(self._active.values())
        for record in records:
            if record.task is not None and not record.task.done():
                record.cancel_requested = True
                record.task.cancel()
        return len(records)

    @property
    def active(self) -> int:
        return len(self._active)

    # ---------------------------------------------------------------- submitting

    def submit(
        self,
        program: Program,
        *,
        deadline_s: float | None = None,
        token_cap: int | None = None,
        program_id: str | None = None,
        name: str | None = None,
        expected_tokens: float | None = None,
    ) -> ProgramHandle:
        """Start ``program`` now (online use); ``deadline_s`` from now; ``token_cap`` its allowance."""
        if not self._open or self._group is None:
            raise RuntimeClosed("the runtime is not running: submit inside `async with Runtime(...)`")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 seconds, got {deadline_s!r}")
        now = self.clock()
        pid = program_id or new_id("prog")
        if pid in self._active:
            raise ValueError(f"program id {pid!r} is already running")
        expected = expected_tokens or self.expected_tokens()
        decision = None
        if self.admission is not None:
            decision = self.admission(AdmissionRequest(deadline_s, expected, token_cap), self.load())
            token_cap = decision.token_cap if decision.admit else token_cap
        record = ProgramRecord(
            pid, name, now, None if deadline_s is None else now + deadline_s,
            self.budget.open(token_cap), expected, self.seconds_per_token, self.scheduler.mean_width,
            None if expected_tokens else self._finished_tokens,  # a caller's hint wins over history
        )  # fmt: skip
        future: asyncio.Future[ProgramResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        handle = ProgramHandle(record, future)
        self.events.emit(now, pid, "created", name=name, deadline_s=deadline_s, token_cap=token_cap)
        if decision is not None and not decision.admit:
            record.state, record.stop_reason, record.finished_at = ProgramState.DONE, StopReason.REJECTED, now
            future.set_result(ProgramResult(
                None, 0.0, TokenUsage(), 0, StopReason.REJECTED, (), pid, details={"reason": decision.reason}
            ))  # fmt: skip
            self.metrics.finished(record)
            self.events.emit(now, pid, "rejected", reason=decision.reason)
            return handle
        if decision is not None and decision.reason:
            self.events.emit(now, pid, "degraded", reason=decision.reason, token_cap=decision.token_cap)
        self._active[pid] = record
        context = RuntimeContext(self, record, self.backend)
        record.task = self._group.create_task(self._run(record, program, context, future), name=pid)
        return handle

    async def run(self, program: Program, **options: Any) -> ProgramResult:
        """Submit ``program`` and wait for its result (options as :meth:`submit`)."""
        return await self.submit(program, **options)

    async def run_batch(
        self,
        programs: Sequence[Program],
        *,
        concurrency: int | None = None,
        progress: bool = True,
        desc: str | None = None,
        save_to: str | Path | None = None,
        deadline_s: float | None = None,
        backend: BatchBackend | None = None,
    ) -> BatchResult:
        """Run ``programs`` (at most ``concurrency`` at once) with a progress bar; results in input
        order; finished results appended to ``save_to`` (JSON lines) as they come; each program's
        ``deadline_s``; ``backend``: where they run (None: here; ``RayBackend(workers=2)`` from
        :mod:`dynasor_client.distributed`: over a Ray cluster). See :func:`~._batch.run_batch`."""
        from ._batch import run_batch  # the batch helpers build on this module

        # Named here, not **options: what a notebook's signature help shows.
        return await run_batch(
            self, programs, concurrency=concurrency, progress=progress, desc=desc, save_to=save_to,
            deadline_s=deadline_s, backend=backend,
        )  # fmt: skip

    # ---------------------------------------------------------------- one program

    async def _run(
        self,
        record: ProgramRecord,
        program: Program,
        context: RuntimeContext,
        future: asyncio.Future[ProgramResult],
    ) -> None:
        result: ProgramResult | None = None
        error: BaseException | None = None
        try:
            with program_scope(record.program_id):
                result = await run_program(program, context)
                if result.partial and result.stop_reason is StopReason.DEADLINE:
                    record.state = ProgramState.STOPPING
        except asyncio.CancelledError:
            error = ProgramCancelled(f"program {record.program_id} was cancelled")
            task = asyncio.current_task()
            if not record.cancel_requested or task is None or task.uncancel() > 0:
                raise  # cancelled from outside (the runtime is shutting down): let it propagate
        except Exception as exc:
            error = exc
            log.warning("program %s failed: %s: %s", record.program_id, type(exc).__name__, exc)
        finally:
            self._finish(record, context, result, error, future)

    def _finish(
        self,
        record: ProgramRecord,
        context: RuntimeContext,
        result: ProgramResult | None,
        error: BaseException | None,
        future: asyncio.Future[ProgramResult],
    ) -> None:
        now = self.clock()
        self.scheduler.discard(record)
        self.budget.close(record.account)
        self._active.pop(record.program_id, None)
        replicas = self.backend.release(record.program_id) if isinstance(self.backend, EndpointPool) else []
        record.finished_at = now
        if result is not None:
            if replicas:  # behind a pool: the replicas that served it (more than one after a failover)
                result.details.setdefault("replicas", replicas)
            record.state, record.stop_reason = ProgramState.DONE, result.stop_reason
            self._finished_tokens.add(context.usage.total)
            self.events.emit(
                now, record.program_id, "done", stop_reason=result.stop_reason.value, answer=result.answer,
                confidence=result.confidence, tokens=context.usage.total, partial=result.partial,
                latency_s=now - record.arrival,
            )  # fmt: skip
            if not future.done():
                future.set_result(result)
        else:
            error = error or ProgramCancelled(f"program {record.program_id} was cancelled")
            cancelled = isinstance(error, ProgramCancelled)
            record.state = ProgramState.CANCELLED if cancelled else ProgramState.FAILED
            self.events.emit(
                now, record.program_id, record.state.value, error=f"{type(error).__name__}: {error}"
            )
            if not future.done():
                future.set_exception(error)
        self.metrics.finished(record)

    # ---------------------------------------------------------------- estimates and accounting

    def _may_dispatch(self, record: ProgramRecord) -> StopReason | None:
        return self.budget.may_dispatch(record.account)

    def charge(self, record: ProgramRecord, kind: TokenKind, usage: Usage) -> None:
        tokens = self.budget.charge(record.account, kind, usage)
        self.metrics.count_tokens(kind, usage)
        now = self.clock()
        self._throughput.append((now, tokens))
        while self._throughput and self._throughput[0][0] < now - _THROUGHPUT_WINDOW_S:
            self._throughput.popleft()
        self.events.emit(now, record.program_id, "request", kind=kind.value, tokens=tokens)

    def observe_speed(self, generation: Generation, latency_s: float | None = None) -> None:
        """Update the decoding-speed estimate (seconds per token per sequence) from a response that
        took ``latency_s`` on the runtime's clock (default: its own wall-clock ``latency_s``)."""
        longest = max((c.num_tokens for c in generation.choices), default=0)
        latency = generation.latency_s if latency_s is None else latency_s
        if longest > 0 and latency > 0:
            sample = latency / longest
            self.seconds_per_token += 0.1 * (sample - self.seconds_per_token)

    def expected_tokens(self) -> float:
        """The prior for a new program's total tokens: the mean of recent finished programs."""
        mean = self._finished_tokens.mean()
        return self._expected_prior if mean is None else mean

    def throughput(self) -> float | None:
        """Tokens per second counted over the last 30 s (None before two measurements)."""
        if len(self._throughput) < 2:
            return None
        span = max(self._throughput[-1][0] - self._throughput[0][0], 1.0)
        return sum(t for _, t in self._throughput) / span

    def load(self) -> Load:
        backlog = sum(r.remaining_tokens() for r in self._active.values())
        return Load(backlog, self.throughput(), len(self._active))
