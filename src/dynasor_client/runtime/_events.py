"""Observability: a per-program event stream (JSON lines), counters, Prometheus text, a summary table."""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..algorithms._program import StopReason, TokenKind
from ..endpoints import Usage
from ._states import ProgramRecord, ProgramState


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a program: ``kind`` is created, rejected, step, request, stop,
    done, cancelled or failed; ``data`` holds its figures."""

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


class RuntimeMetrics:
    """Counters of a runtime: tokens by kind, programs by outcome, deadline attainment, latencies
    and finish-time fairness (a program's latency over the time it was actually being served)."""

    def __init__(self) -> None:
        self.tokens: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.deadline_met = 0
        self.deadline_missed = 0
        self.latencies: list[float] = []
        self.fairness: list[float] = []

    def count_tokens(self, kind: TokenKind, usage: Usage) -> None:
        self.requests += 1
        self.tokens["prompt"] += usage.prompt_tokens
        self.tokens["cached_prompt"] += usage.cached_prompt_tokens or 0
        self.tokens[kind.value] += usage.completion_tokens

    def finished(self, record: ProgramRecord) -> None:
        outcome = record.state.value
        if record.state is ProgramState.DONE and record.stop_reason is not None:
            outcome = record.stop_reason.value
        self.outcomes[outcome] += 1
        met = record.met_deadline()
        if met is True:
            self.deadline_met += 1
        elif met is False:
            self.deadline_missed += 1
        latency = record.latency()
        if latency is not None and record.stop_reason is not StopReason.REJECTED:
            self.latencies.append(latency)
            served = latency - record.queued_s
            if served > 0:
                self.fairness.append(latency / served)

    @property
    def attainment(self) -> float | None:
        total = self.deadline_met + self.deadline_missed
        return None if total == 0 else self.deadline_met / total

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=float)
        fair = np.asarray(self.fairness, dtype=float)
        return {
            "programs": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes),
            "requests": self.requests,
            "tokens": dict(self.tokens),
            "deadline_met": self.deadline_met,
            "deadline_missed": self.deadline_missed,
            "deadline_attainment": self.attainment,
            "latency_mean_s": float(lat.mean()) if lat.size else None,
            "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p90_s": float(np.percentile(lat, 90)) if lat.size else None,
            "finish_time_fairness_mean": float(fair.mean()) if fair.size else None,
            "finish_time_fairness_max": float(fair.max()) if fair.size else None,
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

    def prometheus(self, prefix: str = "dynasor_") -> str:
        """The counters in Prometheus text exposition format (needs ``prometheus-client``)."""
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
        except ImportError as exc:  # pragma: no cover - installed with the [server] extra
            raise ImportError("Prometheus exposition needs prometheus-client: pip install "
                              "'dynasor-client[server]'") from exc  # fmt: skip
        registry = CollectorRegistry()
        tokens = Counter(f"{prefix}tokens", "Tokens by kind", ["kind"], registry=registry)
        for kind, value in self.tokens.items():
            tokens.labels(kind).inc(value)
        programs = Counter(
            f"{prefix}programs", "Finished programs by outcome", ["outcome"], registry=registry
        )
        for outcome, value in self.outcomes.items():
            programs.labels(outcome).inc(value)
        Counter(f"{prefix}requests", "Generation requests", registry=registry).inc(self.requests)
        deadlines = Counter(f"{prefix}deadlines", "Programs with a deadline", ["result"], registry=registry)
        deadlines.labels("met").inc(self.deadline_met)
        deadlines.labels("missed").inc(self.deadline_missed)
        attainment = Gauge(f"{prefix}deadline_attainment", "Share of deadlines met", registry=registry)
        attainment.set(self.attainment if self.attainment is not None else float("nan"))
        return generate_latest(registry).decode()
