"""Per-trace monitors: tiny policies that watch one streamed trace and say when to close it.

A monitor is called with the :class:`~._stream.Trace` after every streamed piece and answers
"close it now?". Monitors compose like tenacity's stop conditions and certaindex's stop rules:
``lowest_group_confidence_below(17.0, group=2048) | tokens_at_least(8192)`` closes on either,
``a & b`` only when both hold. The first firing part names the reason (``Trace.stop_reason``).

Monitors hold no state of their own (the trace keeps the running sums they read), so one monitor
object may watch any number of traces, one after another or at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._stream import Trace


class Monitor(ABC):
    """Base class: ``monitor(trace) -> bool`` (close it now?); ``|`` and ``&`` compose."""

    reason: str = "monitor"
    """What ``Trace.stop_reason`` says when this monitor closes a trace."""
    needs_top_logprobs: bool = False
    """Whether it reads token confidences (the request must ask for ``top_logprobs``)."""

    @abstractmethod
    def __call__(self, trace: Trace) -> bool: ...

    def fired(self, trace: Trace) -> str | None:
        """Why to close the trace now (:attr:`reason`), or None to go on."""
        return self.reason if self(trace) else None

    def __or__(self, other: Monitor) -> Monitor:
        return AnyMonitor((*_parts(self, AnyMonitor), *_parts(other, AnyMonitor)))

    def __and__(self, other: Monitor) -> Monitor:
        return AllMonitor((*_parts(self, AllMonitor), *_parts(other, AllMonitor)))


def _parts(monitor: Monitor, kind: type[AnyMonitor] | type[AllMonitor]) -> tuple[Monitor, ...]:
    return monitor.monitors if isinstance(monitor, kind) else (monitor,)


class AnyMonitor(Monitor):
    """Close when any part says so (``a | b``); the reason is the first firing part's."""

    def __init__(self, monitors: tuple[Monitor, ...]) -> None:
        self.monitors = monitors
        self.needs_top_logprobs = any(m.needs_top_logprobs for m in monitors)

    def __call__(self, trace: Trace) -> bool:
        return self.fired(trace) is not None

    def fired(self, trace: Trace) -> str | None:
        for monitor in self.monitors:
            if (reason := monitor.fired(trace)) is not None:
                return reason
        return None

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.monitors))


class AllMonitor(Monitor):
    """Close when every part says so (``a & b``); the reason is the first part's."""

    def __init__(self, monitors: tuple[Monitor, ...]) -> None:
        self.monitors = monitors
        self.needs_top_logprobs = any(m.needs_top_logprobs for m in monitors)

    def __call__(self, trace: Trace) -> bool:
        return all(m(trace) for m in self.monitors)

    def fired(self, trace: Trace) -> str | None:
        return self.monitors[0].reason if self(trace) else None

    def __repr__(self) -> str:
        return " & ".join(map(repr, self.monitors))


class _LowestGroupConfidence(Monitor):
    reason = "low_confidence"
    needs_top_logprobs = True

    def __init__(self, threshold: float, group: int) -> None:
        if group < 1:
            raise ValueError(f"group must be >= 1 token, got {group}")
        self.threshold, self.group = float(threshold), group

    def __call__(self, trace: Trace) -> bool:
        # Each window is checked as its last token arrives, so "the lowest window so far is under
        # the threshold" is "the newest full window is": nothing to remember between calls.
        value = trace.group_confidence(self.group, full=True)
        return value is not None and value < self.threshold

    def __repr__(self) -> str:
        return f"lowest_group_confidence_below({self.threshold!r}, group={self.group})"


def lowest_group_confidence_below(threshold: float, group: int = 2048) -> Monitor:
    """DeepConf's online stop: close once the mean token confidence of the newest ``group``
    tokens (a full sliding window; token confidence = minus the mean top-k logprob) falls under
    ``threshold``. Needs ``top_logprobs`` >= 1 in the request."""
    return _LowestGroupConfidence(threshold, group)


class _TokensAtLeast(Monitor):
    reason = "tokens"

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1 token, got {n}")
        self.n = n

    def __call__(self, trace: Trace) -> bool:
        return trace.num_tokens >= self.n

    def __repr__(self) -> str:
        return f"tokens_at_least({self.n})"


def tokens_at_least(n: int) -> Monitor:
    """Close once the trace has streamed ``n`` tokens (a soft ``max_tokens`` one can compose)."""
    return _TokensAtLeast(n)


class _When(Monitor):
    def __init__(self, predicate: Callable[[Trace], bool], reason: str) -> None:
        self.predicate, self.reason = predicate, reason

    def __call__(self, trace: Trace) -> bool:
        return bool(self.predicate(trace))

    def __repr__(self) -> str:
        return f"monitor_when({self.predicate!r}, reason={self.reason!r})"


def monitor_when(predicate: Callable[[Trace], bool], *, reason: str = "monitor") -> Monitor:
    """A monitor from any ``predicate(trace) -> bool`` (close when it returns True)."""
    return _When(predicate, reason)
