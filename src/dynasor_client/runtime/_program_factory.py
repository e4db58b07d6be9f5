"""Binding an algorithm to its query: the program the runtime runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..algorithms._program import ProgramContext, ProgramResult


def as_program(
    algorithm: Callable[..., Awaitable[ProgramResult]], *args: Any, **kwargs: Any
) -> Callable[[ProgramContext], Awaitable[ProgramResult]]:
    """``as_program(self_consistency, question, n=30)``: a program that runs the algorithm on its context."""
    if "context" in kwargs or "endpoint" in kwargs:
        raise ValueError("the runtime gives the program its context: pass neither context= nor endpoint=")

    def program(context: ProgramContext) -> Awaitable[ProgramResult]:
        return algorithm(*args, context=context, **kwargs)

    return program
