"""One run of the online benchmark: the programs of a workload submitted at their arrival times to a
runtime under one policy, on the replay engine's timing model on a virtual clock, and each program's
isolated latency (``docs/online-benchmark.md``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import DynasorError
from ..traces import TraceQuestion
from ._online_workload import POLICIES, OnlinePolicy, ProgramSpec, arriving

if TYPE_CHECKING:
    from ..certainty import StopRule
    from ..endpoints import Endpoint
    from ..program import Program

__all__ = [
    "OnlineRunError",
    "ProgramOutcome",
    "RuleName",
    "RunSpec",
    "drive",
    "make_program",
    "measure_base",
    "simulate",
    "stop_rule",
]

RuleName = str  # "paper", "default" or the path of a calibration JSON


class OnlineRunError(DynasorError, RuntimeError):
    """A simulated run failed (a program raised, or the replay refused a request): never hidden."""


@dataclass(frozen=True)
class RunSpec:
    """One simulated run: a policy at an arrival rate and SLO scale, arrivals for ``duration_s``."""

    policy: str
    rate: float
    slo_scale: float
    window: int
    n: int
    rule: RuleName
    profile: str
    duration_s: float
    seed: int = 0  # the replay server's seed
    alone: bool = False  # the same programs, each run alone on the idle GPU (see drive)

    def arriving(self, programs: Sequence[ProgramSpec]) -> list[ProgramSpec]:
        """The programs that arrive in this run at ``rate`` (at least one)."""
        return arriving(programs, self.rate, self.duration_s)


@dataclass(frozen=True)
class ProgramOutcome:
    """What one program did in a run (times in modelled seconds)."""

    index: int
    latency_s: float
    stop_reason: str
    answer: str | None
    tokens: int
    samples: int

    def met(self, deadline_s: float) -> bool:
        """Its own answer, in time (a rejected or cut program misses)."""
        return self.stop_reason not in ("rejected", "deadline") and self.latency_s <= deadline_s * (1 + 1e-9)


def stop_rule(name: RuleName) -> StopRule | str:
    """``"default"``: :func:`~dynasor_client.certainty.default_rule`; ``"paper"``: H~ >= 0.7 at 5;
    else the path of a calibration JSON (``dynasor-client calibrate``, e.g. with ``--max-rounds``)."""
    from ..certainty import default_rule, load_rule

    if name == "paper":
        return "paper"
    if name == "default":
        return default_rule()
    if not Path(name).is_file():
        raise ValueError(f"unknown rule {name!r}: 'default', 'paper' or a calibration JSON file")
    return load_rule(name)


def make_program(spec: ProgramSpec, policy: OnlinePolicy, n: int, rule: RuleName) -> Program:
    """The program of ``spec`` under ``policy``: certaindex-driven, or all ``n`` samples at once."""
    from ..algorithms import self_consistency
    from ..certainty import cap
    from ..program import as_program

    if policy.certaindex:
        reading = "finishing" if policy.racing else "planned"
        question = spec.question.question
        rule_ = stop_rule(rule)
        return as_program(self_consistency, question, n=n, rule=rule_, rounds="auto", reading=reading)
    return as_program(self_consistency, spec.question.question, n=n, rule=cap(n), rounds=[n])


async def drive(
    endpoint: Endpoint,
    programs: Sequence[ProgramSpec],
    run: RunSpec,
    *,
    time_scale: float = 1.0,
) -> list[ProgramOutcome]:
    """Submit ``programs`` at their arrival times (at ``run.rate``) to a runtime over ``endpoint``;
    with ``run.alone``, each one after the previous one finished and a second of idle GPU instead.

    ``time_scale`` is wall seconds per modelled second (1 on the virtual clock; the replay server's
    ``time_scale`` over HTTP): arrivals and deadlines are multiplied by it, latencies divided by it.
    Raises :class:`OnlineRunError` if a program fails.
    """
    from ..runtime import ProgramHandle

    policy = POLICIES[run.policy]
    loop = asyncio.get_running_loop()
    handles: list[tuple[ProgramSpec, ProgramHandle]] = []
    async with policy.runtime(endpoint, run.window) as runtime:
        start = loop.time()
        for spec in programs:
            if run.alone and handles:
                with contextlib.suppress(Exception):  # a failure is reported below, with the others
                    await handles[-1][1]
                await asyncio.sleep(time_scale)
            delay = start + spec.arrival(run.rate) * time_scale - loop.time()
            if delay > 0 and not run.alone:
                await asyncio.sleep(delay)
            deadline = spec.deadline(run.slo_scale) * time_scale if policy.deadlines else None
            program = make_program(spec, policy, run.n, run.rule)
            handles.append((spec, runtime.submit(program, program_id=spec.program_id, deadline_s=deadline)))
        out = []
        for spec, handle in handles:
            try:
                result = await handle
            except Exception as exc:
                raise OnlineRunError(
                    f"{run.policy} at {run.rate:.3g} programs/s: program {spec.program_id} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            latency = handle.record.latency()
            assert latency is not None
            out.append(
                ProgramOutcome(
                    spec.index,
                    latency / time_scale,
                    result.stop_reason.value,
                    result.answer,
                    result.tokens.generated,
                    len(result.answers),
                )
            )
    return out


def simulate(
    questions: Sequence[TraceQuestion],
    programs: Sequence[ProgramSpec],
    run: RunSpec,
    metrics: dict[str, Any] | None = None,
) -> list[ProgramOutcome]:
    """One run on the virtual clock (:class:`~dynasor_client.replay.InProcessReplay`): the programs
    of ``programs`` arriving within ``run.duration_s``; ``metrics`` receives the replay server's
    figures at the end (``tokens_generated`` counts the work of cancelled requests too)."""
    from ..replay import InProcessReplay, run_virtual

    arriving = run.arriving(programs)

    async def main() -> list[ProgramOutcome]:
        async with (
            InProcessReplay(questions, profile=run.profile, seed=run.seed) as replay,
            replay.endpoint(max_in_flight=100_000) as endpoint,
        ):
            outcomes = await drive(endpoint, arriving, run)
            if metrics is not None:
                await asyncio.sleep(1.0)  # the engine takes in the last aborts
                metrics.update(replay.metrics())
            return outcomes

    return run_virtual(main())


def measure_base(
    questions: Sequence[TraceQuestion], programs: Sequence[ProgramSpec], *, n: int, profile: str, seed: int
) -> list[float]:
    """Each program's isolated latency at full ``n``: run alone on an idle modelled GPU, one after
    the other (a fresh replay per call: draws start afresh, as in a run)."""
    from ..replay import InProcessReplay, run_virtual

    policy = POLICIES["naive"]

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        out = []
        async with (
            InProcessReplay(questions, profile=profile, seed=seed) as replay,
            replay.endpoint(max_in_flight=100_000) as endpoint,
            policy.runtime(endpoint, 1) as runtime,
        ):
            for spec in programs:
                started = loop.time()
                try:
                    await runtime.run(make_program(spec, policy, n, "paper"), program_id=spec.program_id)
                except Exception as exc:
                    raise OnlineRunError(
                        f"isolated run of program {spec.program_id} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                out.append(loop.time() - started)
                await asyncio.sleep(1.0)  # idle between programs
        return out

    return run_virtual(main())
