"""Binding an algorithm to its query, and running one program.

An algorithm takes what is its own (the question, ``n``, its rule, sampling); where it runs is
given when it runs, the way SGLang's ``.run()`` takes the backend::

    program = as_program(self_consistency, question, n=30)
    result = await program.run(endpoint, deadline_s=5)       # alone
    handle = runtime.submit(program, deadline_s=5)           # among many, under one budget

Alone, a program runs as a one-program runtime would: its deadline cancels it on the loop clock
and its best answer so far is returned (:func:`run_program`, which the runtime uses too).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from .._exceptions import BudgetExhausted
from ..endpoints import Endpoint, EndpointPool
from ._context import ProgramContext
from ._types import ProgramResult, StopReason

Program = Callable[[ProgramContext], Awaitable[ProgramResult]]
"""A reasoning program bound to its query: called with its context, returns its result."""

# Where a program runs: given to run()/submit()/as_program's .run(), never to the algorithm.
RUN_OPTIONS = ("endpoint", "token_budget", "deadline_s")


def only_budget(exc: BaseException) -> BudgetExhausted | None:
    """The budget refusal behind ``exc`` if that is all it is (also inside an exception group)."""
    if isinstance(exc, BudgetExhausted):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(BudgetExhausted)
        if matched is not None and rest is None:
            return only_budget(matched.exceptions[0])
    return None


async def run_program(program: Program, context: ProgramContext) -> ProgramResult:
    """Run ``program`` until it answers, its deadline passes (cancelled: its in-flight requests are
    aborted, its best answer so far returned, flagged partial) or the budget refuses a request.
    A bound program's ``min_confidence`` applies to each of these results."""
    result = await _run_program(program, context)
    return result.with_floor(program.min_confidence if isinstance(program, BoundProgram) else None)


async def _run_program(program: Program, context: ProgramContext) -> ProgramResult:
    seconds = context.seconds_left()
    timeout = asyncio.timeout(None if seconds is None else max(seconds, 0.0))
    try:
        async with timeout:
            return await program(context)
    except TimeoutError:
        if not timeout.expired():
            raise
        return ProgramResult.best_so_far(context, StopReason.DEADLINE)
    except Exception as exc:
        if (budget := only_budget(exc)) is None:  # also raised inside an algorithm's task group
            raise
        return ProgramResult.best_so_far(context, StopReason(budget.reason))


async def run(
    program: Program,
    endpoint: Endpoint | EndpointPool,
    *,
    token_budget: int | None = None,
    deadline_s: float | None = None,
    program_id: str | None = None,
) -> ProgramResult:
    """Run one program alone over ``endpoint``, within ``token_budget`` tokens and ``deadline_s``
    seconds from now."""
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0 seconds, got {deadline_s!r}")
    loop_time = asyncio.get_running_loop().time()
    deadline = None if deadline_s is None else loop_time + deadline_s
    context = ProgramContext(endpoint, token_budget=token_budget, deadline=deadline, program_id=program_id)
    return await run_program(program, context)


@dataclass(frozen=True)
class BoundProgram:
    """An algorithm bound to its arguments (:func:`as_program`): call it with a context, or
    :meth:`run` it alone."""

    algorithm: Callable[..., Awaitable[ProgramResult]]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    min_confidence: float | None = None
    """Below this confidence the result says "no answer" (:attr:`ProgramResult.abstained`)."""

    def __call__(self, context: ProgramContext) -> Awaitable[ProgramResult]:
        return self.algorithm(*self.args, context=context, **self.kwargs)

    async def run(
        self,
        endpoint: Endpoint | EndpointPool,
        *,
        token_budget: int | None = None,
        deadline_s: float | None = None,
        program_id: str | None = None,
    ) -> ProgramResult:
        """Run it alone (see :func:`run`)."""
        return await run(
            self, endpoint, token_budget=token_budget, deadline_s=deadline_s, program_id=program_id
        )


def as_program(
    algorithm: Callable[..., Awaitable[ProgramResult]],
    *args: Any,
    min_confidence: float | None = None,
    **kwargs: Any,
) -> BoundProgram:
    """``as_program(self_consistency, question, n=30)``: the algorithm bound to its query.

    Where it runs (endpoint, context, token budget, deadline) is not the algorithm's: pass those to
    :meth:`BoundProgram.run` or ``Runtime.submit``; passing them here is an error, not dropped.

    ``min_confidence`` (not passed to the algorithm) is a no-answer floor: a result whose
    ``confidence`` (the program's last certaindex value; self-consistency: H~ in [0, 1]) is below it
    comes back with ``answer=None`` and ``abstained=True``, its stop reason unchanged, the answer it
    had in ``details["unconfident_answer"]``. Without it, the majority of garbage samples at
    confidence 0.0 is returned as the answer.
    """
    if min_confidence is not None and not math.isfinite(min_confidence):
        raise ValueError(f"min_confidence must be a finite number, got {min_confidence!r}")
    misplaced = sorted({"context", *RUN_OPTIONS} & kwargs.keys())
    if misplaced:
        raise TypeError(
            f"as_program() got {', '.join(misplaced)}: where a program runs is given when it runs "
            "(program.run(endpoint, token_budget=..., deadline_s=...) or runtime.submit(program, "
            "deadline_s=..., token_cap=...))"
        )
    target = inspect.unwrap(algorithm)
    try:
        inspect.signature(target).bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"as_program({getattr(target, '__name__', target)!r}, ...): {exc}") from None
    return BoundProgram(algorithm, args, kwargs, min_confidence)


P = ParamSpec("P")
R = TypeVar("R", bound=ProgramResult)


def algorithm(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Mark a reasoning algorithm: it runs on the ``context=`` it is given. For one release,
    ``endpoint=`` (with ``token_budget=`` / ``deadline_s=``) still runs it alone, with a
    :class:`DeprecationWarning`; those options without ``endpoint=`` are an error."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name in RUN_OPTIONS if kwargs.get(name) is not None}
        for name in RUN_OPTIONS:
            kwargs.pop(name, None)
        if not options:
            if kwargs.get("context") is None:
                raise TypeError(
                    f"{fn.__name__}() runs on a context=: run it alone with "
                    f"`await as_program({fn.__name__}, ...).run(endpoint)` or under a Runtime"
                )
            return await fn(*args, **kwargs)
        if kwargs.get("context") is not None or "endpoint" not in options:
            raise TypeError(
                f"{fn.__name__}() got {', '.join(sorted(options))}: under a context= these would be "
                "dropped; give them to the runtime (submit(program, deadline_s=..., token_cap=...))"
            )
        warnings.warn(
            f"{fn.__name__}(..., endpoint=...) is deprecated and goes away in the next release: "
            f"use `await as_program({fn.__name__}, ...).run(endpoint, token_budget=..., deadline_s=...)`",
            DeprecationWarning,
            stacklevel=2,
        )
        endpoint = options.pop("endpoint")
        kwargs.pop("context", None)
        return await run(as_program(fn, *args, **kwargs), endpoint, **options)

    return wrapper
