"""Observability: a per-program event stream (JSON lines), the runtime's Prometheus metrics, a summary."""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..endpoints import Usage
from ..program import StopReason, TokenKind
from ._states import ProgramRecord, ProgramState


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a program: ``kind`` is created, rejected, step, request, stop,
    done, cancelled or failed; ``data`` holds its figures. Behind an :class:`EndpointPool` also
    routed (the program placed on ``replica``, or moved there from ``previous``), and replica_down
    / replica_up (a replica taken out or back; ``program_id`` empty)."""

    time: float
    program_id: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "program_id": self.program_id, "event": self.kind, **self.data}


class EventLog:
    """The runtime's event stream: the last ``maxlen`` events in memory (None: all, 0: none), an
    optional JSON-lines ``sink`` written as events happen, and listeners called with each event."""

    def __init__(
        self,
        *,
        maxlen: int | None = 100_000,
        sink: str | Path | IO[str] | None = None,
        listeners: tuple[Callable[[Event], None], ...] = (),
    ) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._owned = isinstance(sink, str | Path)
        self._sink: IO[str] | None = (
            Path(sink).open("a", encoding="utf-8") if isinstance(sink, str | Path) else sink  # noqa: SIM115 - closed by close()
        )
        self.listeners = list(listeners)

    def emit(self, time: float, program_id: str, event_kind: str, /, **data: Any) -> None:
        event = Event(time, program_id, event_kind, data)
        if self._events.maxlen != 0:
            self._events.append(event)
        if self._sink is not None:
            self._sink.write(json.dumps(event.as_dict(), default=str) + "\n")
        for listener in self.listeners:
            listener(event)

    def __iter__(self) -> Iterator[Event]:
        return iter(tuple(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def of(self, program_id: str) -> list[Event]:
        return [e for e in self._events if e.program_id == program_id]

    def to_jsonl(self, path: str | Path) -> int:
        """Write the events kept in memory as JSON lines; returns how many."""
        events = tuple(self._events)
        with Path(path).open("w", encoding="utf-8") as out:
            for event in events:
                out.write(json.dumps(event.as_dict(), default=str) + "\n")
        return len(events)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.flush()
            if self._owned:
                self._sink.close()
            self._sink = None


#: Program latencies (seconds) the histogram counts into: milliseconds to an hour.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0,
                   600.0, 1800.0, 3600.0, math.inf)  # fmt: skip
#: Finish-time fairness (latency over time served, >= 1) the histogram counts into.
FAIRNESS_BUCKETS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, math.inf)
#: How many of the latest latencies (and fairness ratios) are kept for exact percentiles.
RECENT = 1024


class RuntimeMetrics:
    """Counters of a runtime: tokens by kind, programs by outcome, deadline attainment, latencies
    and finish-time fairness (a program's latency over the time it was actually being served).

    They live in the runtime's own Prometheus ``registry`` (a ``CollectorRegistry`` per runtime:
    many runtimes may share a process), so memory stays bounded however long the runtime serves:
    latencies and fairness ratios go into histograms (``LATENCY_BUCKETS``, ``FAIRNESS_BUCKETS``),
    whose sums give exact means over every program. Percentiles (``latency_p50_s``,
    ``latency_p90_s``) are exact over the last ``recent`` programs, kept in :attr:`latencies`
    (a bounded deque, like :attr:`fairness`): for a run of fewer programs, over all of them.
    ``prefix`` starts every metric's name.
    """

    def __init__(self, *, prefix: str = "dynasor_", recent: int = RECENT) -> None:
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.prefix = prefix
        self.registry = CollectorRegistry()
        r = self.registry
        self._tokens = Counter(f"{prefix}tokens", "Tokens by kind", ["kind"], registry=r)
        self._programs = Counter(f"{prefix}programs", "Finished programs by outcome", ["outcome"], registry=r)
        self._requests = Counter(f"{prefix}requests", "Generation requests", registry=r)
        self._deadlines = Counter(f"{prefix}deadlines", "Programs with a deadline", ["result"], registry=r)
        Gauge(f"{prefix}deadline_attainment", "Share of deadlines met", registry=r).set_function(
            lambda: math.nan if self.attainment is None else self.attainment
        )
        self._latency = Histogram(
            f"{prefix}program_latency_seconds", "Seconds from submission to result of finished programs",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._fairness = Histogram(
            f"{prefix}finish_time_fairness", "Latency over the time served, of finished programs",
            buckets=FAIRNESS_BUCKETS, registry=r,
        )  # fmt: skip
        self.latencies: collections.deque[float] = collections.deque(maxlen=recent)
        self.fairness: collections.deque[float] = collections.deque(maxlen=recent)
        self._fairness_max: float | None = None

    def count_tokens(self, kind: TokenKind, usage: Usage) -> None:
        self._requests.inc()
        self._tokens.labels("prompt").inc(usage.prompt_tokens)
        self._tokens.labels("cached_prompt").inc(usage.cached_prompt_tokens or 0)
        self._tokens.labels(kind.value).inc(usage.completion_tokens)

    def finished(self, record: ProgramRecord) -> None:
        outcome = record.state.value
        if record.state is ProgramState.DONE and record.stop_reason is not None:
            outcome = record.stop_reason.value
        self._programs.labels(outcome).inc()
        met = record.met_deadline()
        if met is not None:
            self._deadlines.labels("met" if met else "missed").inc()
        latency = record.latency()
        if latency is not None and record.stop_reason is not StopReason.REJECTED:
            self._latency.observe(latency)
            self.latencies.append(latency)
            served = latency - record.queued_s
            if served > 0:
                ratio = latency / served
                self._fairness.observe(ratio)
                self.fairness.append(ratio)
                self._fairness_max = ratio if self._fairness_max is None else max(self._fairness_max, ratio)

    # ---------------------------------------------------------------- reading the registry

    def _values(self, metric: Counter, name: str, label: str) -> collections.Counter[str]:
        name = f"{self.prefix}{name}_total"  # a Counter's samples: <name>_total and <name>_created
        return collections.Counter(
            {s.labels[label]: int(s.value) for family in metric.collect() for s in family.samples
             if s.name == name}
        )  # fmt: skip

    def _sample(self, metric: Counter | Histogram, name: str) -> float:
        # Read from the metric itself: the registry would also run the attainment gauge's function.
        name = f"{self.prefix}{name}"
        return next((s.value for f in metric.collect() for s in f.samples if s.name == name), 0.0)

    @property
    def tokens(self) -> collections.Counter[str]:
        """Tokens by kind: ``prompt``, ``cached_prompt``, ``generated``, ``probe``, ``reward``."""
        return self._values(self._tokens, "tokens", "kind")

    @property
    def outcomes(self) -> collections.Counter[str]:
        """Finished programs by outcome (a stop reason, or failed, cancelled, rejected, ...)."""
        return self._values(self._programs, "programs", "outcome")

    @property
    def requests(self) -> int:
        return int(self._sample(self._requests, "requests_total"))

    @property
    def deadline_met(self) -> int:
        return self._values(self._deadlines, "deadlines", "result")["met"]

    @property
    def deadline_missed(self) -> int:
        return self._values(self._deadlines, "deadlines", "result")["missed"]

    @property
    def attainment(self) -> float | None:
        met, missed = self.deadline_met, self.deadline_missed
        return None if met + missed == 0 else met / (met + missed)

    def _mean(self, histogram: Histogram, name: str) -> float | None:
        count = self._sample(histogram, f"{name}_count")
        return self._sample(histogram, f"{name}_sum") / count if count else None

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=float)
        outcomes = self.outcomes
        return {
            "programs": sum(outcomes.values()),
            "outcomes": dict(outcomes),
            "requests": self.requests,
            "tokens": dict(self.tokens),
            "deadline_met": self.deadline_met,
            "deadline_missed": self.deadline_missed,
            "deadline_attainment": self.attainment,
            "latency_mean_s": self._mean(self._latency, "program_latency_seconds"),
            "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p90_s": float(np.percentile(lat, 90)) if lat.size else None,
            "finish_time_fairness_mean": self._mean(self._fairness, "finish_time_fairness"),
            "finish_time_fairness_max": self._fairness_max,
        }

    def summary(self) -> str:
        """A short table for the end of a batch."""
        d = self.as_dict()

        def fmt(x: Any, unit: str = "") -> str:
            if x is None or (isinstance(x, float) and math.isnan(x)):
                return "-"
            return f"{x:.3g}{unit}" if isinstance(x, float) else f"{x}{unit}"

        tokens = d["tokens"]
        spent = (
            tokens.get("prompt", 0) - tokens.get("cached_prompt", 0)
            + sum(tokens.get(k, 0) for k in ("generated", "probe", "reward"))
        )  # fmt: skip
        rows = [
            ("programs", fmt(d["programs"])),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(d["outcomes"].items())) or "-"),
            ("requests", fmt(d["requests"])),
            ("tokens", f"{spent} ({', '.join(f'{k} {v}' for k, v in sorted(tokens.items()))})"),
            ("deadline attainment", fmt(d["deadline_attainment"])),
            ("latency mean / p50 / p90", " / ".join(fmt(d[k], " s") for k in
                                                     ("latency_mean_s", "latency_p50_s", "latency_p90_s"))),
            ("finish-time fairness mean / max", f"{fmt(d['finish_time_fairness_mean'])} / "
                                                f"{fmt(d['finish_time_fairness_max'])}"),
        ]  # fmt: skip
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def prometheus(self) -> str:
        """The runtime's registry in Prometheus text exposition format."""
        return generate_latest(self.registry).decode()
