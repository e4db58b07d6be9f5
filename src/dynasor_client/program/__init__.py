"""The program core: the boundary between a reasoning program and whatever runs it.

- :class:`ProgramContext`: the one context a program runs under (generation, usage, certaindex,
  the stop check); the runtime subclasses it.
- :func:`as_program` binds an algorithm to its query; :func:`run` runs a program alone;
  :func:`run_program` is the deadline and budget handling both share.
- What a program spends and returns: :class:`TokenKind`, :class:`TokenUsage`, :class:`StopReason`,
  :class:`CertaindexPoint`, :class:`ProgramResult`.
"""

from ._context import (
    DEFAULT_RESERVATION,
    MIN_USEFUL_TOKENS,
    ProgramContext,
    PromptScale,
    StandaloneContext,
    fit_request,
)
from ._run import BoundProgram, Program, algorithm, as_program, only_budget, run, run_program
from ._types import CertaindexPoint, ProgramResult, StopReason, TokenKind, TokenUsage

__all__ = [
    "DEFAULT_RESERVATION",
    "MIN_USEFUL_TOKENS",
    "BoundProgram",
    "CertaindexPoint",
    "Program",
    "ProgramContext",
    "ProgramResult",
    "PromptScale",
    "StandaloneContext",
    "StopReason",
    "TokenKind",
    "TokenUsage",
    "algorithm",
    "as_program",
    "fit_request",
    "only_budget",
    "run",
    "run_program",
]
