"""Reasoning programs as coroutines driven by certaindex.

A program gets everything from a :class:`ProgramContext` (generation, allowance, certaindex
reporting, whether to go on) and returns a :class:`ProgramResult`. :class:`StandaloneContext` runs
one program over one endpoint. So far: :func:`self_consistency` (issue 5 adds best-of-N, Rebase,
MCTS and Dynasor-CoT on the same protocol).
"""

from ._program import (
    CertaindexPoint,
    ProgramContext,
    ProgramResult,
    StandaloneContext,
    StopReason,
    TokenKind,
    TokenUsage,
    rule_stop_reason,
)
from ._self_consistency import round_sizes, self_consistency, self_consistency_rule

__all__ = [
    "CertaindexPoint",
    "ProgramContext",
    "ProgramResult",
    "StandaloneContext",
    "StopReason",
    "TokenKind",
    "TokenUsage",
    "round_sizes",
    "rule_stop_reason",
    "self_consistency",
    "self_consistency_rule",
]
