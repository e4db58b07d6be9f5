"""The one program context: what a reasoning program gets from whatever runs it.

A program sees only a :class:`ProgramContext`: it generates through it, reports its certaindex to
it and asks it whether to stop. The context owns the token usage, the certaindex history and the
single stop check, in one order: the deadline, then the program's own rule, then the budget. The
budget comes last because asking it may grant the program more allowance (the runtime's
reallocation): a program its rule stops must not take allowance others could use. Runners differ
only in the hooks below: a standalone run (:func:`~dynasor_client.program.run`) uses this class as
it is; the runtime's subclass sends every request through its scheduler and budget.

Time is the event loop's clock everywhere, so a deadline means the same thing standalone and
under the runtime, and under the replay engine's virtual-time loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from .._exceptions import BudgetExhausted
from .._log import new_id, program_scope
from ..certainty import Observations, StopRule
from ..endpoints import (
    Endpoint,
    EndpointPool,
    Generation,
    Message,
    Meter,
    Monitor,
    Prompt,
    SamplingParams,
    Trace,
    Usage,
    meter_var,
    prompt_estimate,
)
from ._types import CertaindexPoint, ProgramResult, StopReason, TokenKind, TokenUsage
from ._watch import watch_trace

DEFAULT_RESERVATION = 1024
"""Tokens per sequence reserved for a request that names no ``max_tokens`` (and for a request sent
through a bare request slot, whose size the budget does not see): when fewer are left, a request
with no ``max_tokens`` is sent with ``max_tokens`` set to what fits."""

MIN_USEFUL_TOKENS = 16
"""A request is shrunk no further than this many tokens per sequence (or its own ``max_tokens``
when smaller): when not even that fits, it is refused (:class:`BudgetExhausted`)."""


def fit_request(
    free: int, settled: int | None, n: int, max_tokens: int | None, prompt: int, counted: bool
) -> tuple[int, int | None, int] | None:
    """The shape of a request under a budget with ``free`` tokens left to reserve (``settled``:
    left once the reservations in flight settle; None: do not wait for them): ``(n, max_tokens,
    tokens to reserve)``, ``max_tokens`` then ``n`` shrunk to what fits; None to wait for the
    reservations in flight to settle first (they stand in the way); raises
    :class:`BudgetExhausted` when not even :data:`MIN_USEFUL_TOKENS` per sequence fit.
    ``counted``: whether the request's generated tokens count (else only its ``prompt``)."""
    per = max_tokens or DEFAULT_RESERVATION
    want = prompt + (per * n if counted else 0)
    if want <= free:
        return n, max_tokens, want
    if settled is not None and settled > free:
        return None
    if not counted:  # only the prompt counts: nothing to shrink
        if free <= 0:
            raise _exhausted(free)
        return n, max_tokens, free
    room = free - prompt
    least = min(MIN_USEFUL_TOKENS, per)
    if room // n >= least:
        per = room // n
    else:
        n = room // least
        if n < 1:
            raise _exhausted(free)
        per = min(per, room // n)
    return n, per, prompt + per * n


def _exhausted(free: int) -> BudgetExhausted:
    return BudgetExhausted(f"only {max(free, 0)} tokens of the budget are left: the request does not fit")


_UNMETERED = contextlib.nullcontext()


class PromptScale:
    """How much larger prompts really are than their estimate (characters / 4, which undercounts
    LaTeX, code and numbers): the largest ratio of a prompt's reported tokens to its estimate seen
    so far (at least 1, at most :attr:`MOST`). Reservations scale their prompt estimates by it, so
    after the first responses a budget's overshoot is no longer the estimate's error."""

    MOST = 4.0
    __slots__ = ("ratio",)

    def __init__(self) -> None:
        self.ratio = 1.0

    def observe(self, estimate: int, actual: int) -> None:
        if estimate > 0 and actual > estimate:
            self.ratio = min(self.MOST, max(self.ratio, actual / estimate))

    def apply(self, estimate: int) -> int:
        return estimate if self.ratio == 1.0 else math.ceil(estimate * self.ratio)


GenerationListener = Callable[[TokenKind, Generation], None]
ReportListener = Callable[[CertaindexPoint], None]
RequestRewrite = Callable[
    [Prompt | None, Sequence[Message] | None], tuple[Prompt | None, Sequence[Message] | None]
]


class ProgramContext:
    """Everything a program needs from the outside (module docs).

    Args:
        endpoint: where requests go (an :class:`EndpointPool` keeps the program on one replica).
        token_budget: tokens this program may spend (None: no limit of its own).
        deadline: when it must answer, on the loop clock (None: no deadline).
        program_id: its id (sent as ``X-Program-Id``); a new one when None.
    """

    def __init__(
        self,
        endpoint: Endpoint | EndpointPool,
        *,
        token_budget: int | None = None,
        deadline: float | None = None,
        program_id: str | None = None,
    ) -> None:
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 token, got {token_budget}")
        self.program_id = program_id or new_id("prog")
        self._backend = endpoint  # generate() goes through a pool, which fails over
        # Chunked algorithms drive an Endpoint directly: a pool gives the program's pinned replica.
        self.endpoint: Endpoint = (
            endpoint.endpoint_for(self.program_id) if isinstance(endpoint, EndpointPool) else endpoint
        )
        self.token_budget, self.deadline = token_budget, deadline
        self.usage = TokenUsage()
        self.certaindex: list[CertaindexPoint] = []
        self.rule: StopRule | None = None
        self.started = self.clock()
        self._on_generation: list[GenerationListener] = []
        self._on_report: list[ReportListener] = []
        self._rewrite: RequestRewrite | None = None
        self._reserved = 0  # standalone: held by this program's requests in flight
        #: Prompt estimates' error learnt from responses (the runtime shares one across programs).
        self.prompt_scale = PromptScale()
        #: Bill the requests that do not complete even without a budget (the proxy bills its keys).
        self.bill_aborted = False
        self._settle_waiters: list[asyncio.Future[None]] = []

    # ---------------------------------------------------------------- what a program calls

    async def generate(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        n: int = 1,
        params: SamplingParams | None = None,
        kind: TokenKind = TokenKind.GENERATED,
    ) -> Generation:
        """One request of ``n`` sequences: a chat when ``messages`` are given, else a completion."""
        if self._rewrite is not None:
            prompt, messages = self._rewrite(prompt, messages)
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt= or messages=")
        params = self.request_params(params)
        async with self.request_slot(n, tokens=0):
            # Reserved once the slot is granted (the budget may have moved while it waited), and
            # given back in the same step of the loop as the tokens are charged.
            held = 0
            budgeted = self.budgeted()
            if budgeted:
                n, params, held = await self.reserve(kind, n, params, prompt, messages)
            metered = self.metered(kind) if budgeted or self.bill_aborted else _UNMETERED
            started = self.clock()
            try:
                with program_scope(self.program_id), metered:  # X-Program-Id: one program, one replica
                    if messages is not None:
                        generation = await self._backend.chat(messages, n=n, params=params)
                    else:
                        assert prompt is not None
                        generation = await self._backend.complete(prompt, n=n, params=params)
            finally:
                self.release(held)
            elapsed = self.clock() - started
        if budgeted:
            self.prompt_scale.observe(prompt_estimate(prompt, messages), generation.usage.prompt_tokens)
        self.charge(kind, generation.usage)
        self.observed(generation, elapsed)
        for listener in self._on_generation:
            listener(kind, generation)
        return generation

    def watch_trace(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        params: SamplingParams | None = None,
        monitor: Monitor | None = None,
        kind: TokenKind = TokenKind.GENERATED,
    ) -> contextlib.AbstractAsyncContextManager[Trace]:
        """Stream one generation as a watched trace (``Endpoint.watch``) under this context:
        scheduled, reserved, and its generated tokens charged as ``kind`` when it ends, however it
        ends (closed, cancelled by the deadline, failed). See :mod:`._watch`."""
        return watch_trace(self, prompt, messages=messages, params=params, monitor=monitor, kind=kind)

    @contextlib.asynccontextmanager
    async def request_slot(
        self,
        n: int = 1,
        *,
        tokens: int | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int = 0,
        kind: TokenKind = TokenKind.GENERATED,
        shrink: bool = True,
    ) -> AsyncIterator[int | None]:
        """Wait for the right to send a request of ``n`` sequences, and hold it while inside: for
        calls made outside :meth:`generate` (chunked decoding, probes, reward calls) that
        scheduling and the budget must see. Yields the ``max_tokens`` to send the request with.

        Under a budget, a request that gives its ``max_tokens`` (and the estimate of its prompt,
        ``prompt_tokens``) reserves them as :meth:`generate` does: ``max_tokens`` is shrunk to
        what is left (so send the yielded value), and :class:`~dynasor_client.BudgetExhausted` is
        raised when not even :data:`MIN_USEFUL_TOKENS` fit, or, with ``shrink=False`` (a request
        whose size cannot change: a reward model's), when not all of ``max_tokens`` fits. Without
        ``max_tokens`` the slot holds ``tokens`` (None: the default reservation per sequence, or
        what is left when less; 0: nothing, the caller reserves). Requests that do not complete
        are billed as ``kind`` (:meth:`metered`)."""
        if n < 1:
            raise ValueError(f"a request has at least one sequence, got n={n}")
        async with self.granted(n):
            held = 0
            if tokens != 0 and self.budgeted():
                if max_tokens is not None:
                    if not shrink:  # all of it is the request's input (a reward model's): scaled
                        max_tokens = self.prompt_scale.apply(max_tokens)
                    scaled = self.prompt_scale.apply(prompt_tokens)
                    fitted_n, fitted, held = await self.fit(kind, n, max_tokens, scaled)
                    if fitted_n < n or (not shrink and fitted != max_tokens):
                        self.release(held)
                        raise BudgetExhausted(
                            f"only {held} tokens of the budget are left: a request of {n} x "
                            f"{max_tokens} tokens after a prompt of ~{prompt_tokens} does not fit"
                        )
                    max_tokens = fitted
                else:
                    held = self.hold(DEFAULT_RESERVATION * n if tokens is None else tokens)
            try:
                if tokens == 0 or not self.metering():  # generate() meters its own request
                    yield max_tokens
                else:
                    with self.metered(kind):
                        yield max_tokens
            finally:
                self.release(held)

    @contextlib.asynccontextmanager
    async def granted(self, n: int) -> AsyncIterator[None]:
        """Hold the right to send a request of ``n`` sequences (a runner's scheduler); one program
        alone has nothing to wait for."""
        yield

    def hold(self, tokens: int) -> int:
        """Reserve up to ``tokens`` for a request whose size the budget does not see (what is left
        when less); returns what was held. A standalone program holds nothing this way."""
        return 0

    @contextlib.contextmanager
    def metered(self, kind: TokenKind) -> Iterator[None]:
        """Bill the HTTP requests sent inside that do not complete (cancelled, dropped mid-stream,
        timed out, failed, retried): their prompt's estimate once the server accepted them and the
        tokens counted in what they streamed (:class:`~dynasor_client.endpoints.Meter`), charged
        as ``kind``. Completed requests are charged by the caller, from their ``usage``. Only
        while :meth:`metering` (no budget, not under the proxy: nothing changes)."""
        if not self.metering():
            yield
            return
        meter = Meter()
        token = meter_var.set(meter)
        try:
            yield
        except BaseException:
            self._bill(kind, meter.usage())
            raise
        else:
            self._bill(kind, meter.unfinished())
        finally:
            meter_var.reset(token)

    def _bill(self, kind: TokenKind, usage: Usage) -> None:
        if usage.prompt_tokens or usage.completion_tokens:
            if kind is TokenKind.REWARD:  # a reward model's tokens are all reward tokens (its usage)
                usage = Usage(0, usage.prompt_tokens + usage.completion_tokens)
            self.charge(kind, usage)

    def metering(self) -> bool:
        """Whether requests that do not complete are billed: under a budget, or when asked
        (:attr:`bill_aborted`, the proxy)."""
        return self.bill_aborted or self.budgeted()

    def charge(self, kind: TokenKind, usage: Usage, *, estimate: int | None = None) -> None:
        """Count tokens spent (also those spent outside :meth:`generate`). ``estimate``: what the
        request reserved for its prompt (a reward request: for all of it), to learn the estimates'
        error (:class:`PromptScale`)."""
        if estimate is not None:
            actual = usage.completion_tokens if kind is TokenKind.REWARD else usage.prompt_tokens
            self.prompt_scale.observe(estimate, actual)
        self.usage.add(kind, usage)

    def bind(self, rule: StopRule) -> None:
        """The algorithm's stop rule, which :meth:`stop_reason` checks."""
        self.rule = rule

    def report(self, value: float, observations: int, answer: str | None = None) -> None:
        """The program's certaindex after ``observations`` observations and its answer so far."""
        point = CertaindexPoint(observations, value, self.usage.total, self.clock() - self.started, answer)
        self.certaindex.append(point)
        self.reported(point)
        for listener in self._on_report:
            listener(point)

    def stop_reason(self, obs: Observations) -> StopReason | None:
        """Whether to stop now and why: the deadline, then the rule, then the budget (module docs)."""
        seconds = self.seconds_left()
        if seconds is not None and seconds <= 0:
            return StopReason.DEADLINE
        if self.rule is not None and (reason := self.rule.fired(obs)) is not None:
            return StopReason(reason)
        return self.budget_stop()

    def result(
        self,
        answer: str | None,
        reason: StopReason | None,
        *,
        answers: Sequence[str | None] = (),
        steps: int | None = None,
        partial: bool = False,
        details: dict[str, Any] | None = None,
    ) -> ProgramResult:
        """The program's result: its ``answer``, why it stopped (None: it ran its course, the cap),
        and what the context holds (tokens, certaindex, confidence: the last reported value)."""
        return ProgramResult(
            answer=answer,
            confidence=self.certaindex[-1].value if self.certaindex else 0.0,
            tokens=self.usage,
            steps=len(self.certaindex) if steps is None else steps,
            stop_reason=reason or StopReason.CAP,
            certaindex=tuple(self.certaindex),
            program_id=self.program_id,
            answers=tuple(answers),
            details=details or {},
            partial=partial,
        )

    def tokens_left(self) -> int | None:
        return None if self.token_budget is None else self.token_budget - self.usage.total

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def saturated(self) -> bool:
        """Whether a request sent now would wait behind other programs' requests (a runtime whose
        window is full): work sent ahead of need then only adds to the queue."""
        return False  # one program alone shares nothing

    # ---------------------------------------------------------------- for whoever runs the program

    def clock(self) -> float:
        """The event loop's clock (``time.monotonic``, which it follows by default, outside a loop)."""
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def watch(
        self,
        *,
        on_generation: GenerationListener | None = None,
        on_report: ReportListener | None = None,
        rewrite: RequestRewrite | None = None,
    ) -> None:
        """Follow the program from outside: every generation, every report; ``rewrite`` changes
        what :meth:`generate` sends (e.g. a client's raw prompt instead of the algorithm's chat)."""
        if on_generation is not None:
            self._on_generation.append(on_generation)
        if on_report is not None:
            self._on_report.append(on_report)
        if rewrite is not None:
            self._rewrite = rewrite

    # Hooks for a runner (the runtime overrides them).

    def request_params(self, params: SamplingParams | None) -> SamplingParams | None:
        """The sampling parameters a request is sent with."""
        return params

    def observed(self, generation: Generation, elapsed_s: float) -> None:
        """A response arrived ``elapsed_s`` after it was sent (on the loop clock)."""

    def reported(self, point: CertaindexPoint) -> None:
        """The program reported a certaindex point."""

    async def reserve(
        self,
        kind: TokenKind,
        n: int,
        params: SamplingParams | None,
        prompt: Prompt | None,
        messages: Sequence[Message] | None,
    ) -> tuple[int, SamplingParams | None, int]:
        """Reserve a request's most tokens before it is sent: ``(n, params, held)`` to send it
        with, shrunk to what the budget has left (the runtime's; a standalone program reserves
        nothing). :meth:`release` ``held`` when the request ends."""
        max_tokens = params.max_tokens if params is not None else None
        estimate = self.prompt_scale.apply(prompt_estimate(prompt, messages))
        fitted_n, fitted, held = await self.fit(kind, n, max_tokens, estimate)
        if fitted != max_tokens:
            params = dataclasses.replace(params or SamplingParams(), max_tokens=fitted)
        return fitted_n, params, held

    def budgeted(self) -> bool:
        """Whether a budget applies to this program's requests (else nothing is reserved)."""
        return self.token_budget is not None

    async def fit(
        self, kind: TokenKind, n: int, max_tokens: int | None, prompt_tokens: int
    ) -> tuple[int, int | None, int]:
        """Reserve a request of ``n`` sequences of at most ``max_tokens`` after a prompt of about
        ``prompt_tokens``: ``(n, max_tokens, held)`` shrunk to what is left, after waiting for
        other requests' reservations to settle when they stand in the way (raises
        :class:`~dynasor_client.BudgetExhausted` when nothing useful fits)."""
        if self.token_budget is None:
            return n, max_tokens, 0
        while True:  # a standalone program's own budget: all its tokens count
            settled = self.token_budget - self.usage.total
            shape = fit_request(settled - self._reserved, settled, n, max_tokens, prompt_tokens, True)
            if shape is not None:
                self._reserved += shape[2]
                return shape
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._settle_waiters.append(waiter)
            await waiter

    def release(self, held: int) -> None:
        """Give back what :meth:`reserve` held (the request ended; its tokens are charged)."""
        if held:
            self._reserved -= held
            waiters, self._settle_waiters = self._settle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def share(self, pool: Any) -> None:
        """Reserve and charge this program's tokens against ``pool`` too (a proxy key's budget,
        :class:`dynasor_client.budget.Pool`); a standalone program has no reservations."""

    def budget_stop(self) -> StopReason | None:
        """Why the budget says stop, or None."""
        tokens = self.tokens_left()
        return StopReason.BUDGET if tokens is not None and tokens <= 0 else None


class StandaloneContext(ProgramContext):
    """A :class:`ProgramContext` for one program with its ``rule`` bound and ``deadline_s`` from
    now: for driving an algorithm's parts by hand (tests, notebooks). Programs run alone with
    :func:`~dynasor_client.program.run`."""

    def __init__(
        self,
        endpoint: Endpoint | EndpointPool,
        rule: StopRule,
        *,
        token_budget: int | None = None,
        deadline_s: float | None = None,
        program_id: str | None = None,
    ) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 seconds, got {deadline_s!r}")
        super().__init__(endpoint, token_budget=token_budget, program_id=program_id)
        self.deadline = None if deadline_s is None else self.started + deadline_s
        self.bind(rule)
