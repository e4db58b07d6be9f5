"""The online benchmark's runs: its settings, each replicate's workload and isolated latencies, the
rate and SLO sweeps of every policy (in worker processes or inline) and a replicate's figures
(``docs/online-benchmark.md``: *Sweeps*, *Alone*, *Floor*, *Replicates*)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..traces import Split, TraceQuestion, load_traces, select_split
from ._online_simulate import ProgramOutcome, RuleName, RunSpec, measure_base, simulate
from ._online_stats import (
    attainment,
    crossing_down,
    mean,
    min_scale_at_90,
    percentile,
    ratio,
    run_figures,
)
from ._online_workload import POLICIES, ProgramSpec, arriving, build_workload

__all__ = [
    "QUICK_RATE_MULTIPLES",
    "QUICK_SLO_SCALES",
    "RATE_MULTIPLES",
    "SLO_SCALES",
    "Grid",
    "OnlineConfig",
    "Pool",
    "RunResult",
    "load_questions",
    "run_replicate",
    "slo_floor",
]

# -- the settings --

RATE_MULTIPLES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
SLO_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0)
QUICK_RATE_MULTIPLES = (0.5, 1.0, 2.0)
QUICK_SLO_SCALES = (1.0, 2.0, 4.0)
STOP_BELOW = 0.5  #: a policy's rate sweep stops after the first rate with attainment under this
BASE_CHUNK = 200  #: programs per isolated-latency measurement (fixed: results do not depend on --jobs)


@dataclass(frozen=True)
class OnlineConfig:
    """The settings of one benchmark (``docs/online-benchmark.md`` and the CLI's help)."""

    traces: str
    profile: str = "llama3-8b-h100-80gb"
    split: Split = "test"
    n: int = 30
    rule: RuleName = "default"
    window: int | None = None  # None: the profile's max_batch
    duration_s: float = 30.0
    slo_scale: float = 3.0
    ref_rate_x: float = 0.75
    rate_multiples: tuple[float, ...] = RATE_MULTIPLES
    slo_scales: tuple[float, ...] = SLO_SCALES
    policies: tuple[str, ...] = tuple(POLICIES)
    seed: int = 0
    replay_seed: int = 0
    seeds: int = 1  # replicates: seed + r and replay_seed + r for r < seeds
    jobs: int = 1
    quick: bool = False


@dataclass
class _Context:
    """What a worker needs besides the run: the questions and the workload (cached per process)."""

    config: OnlineConfig
    questions: list[TraceQuestion]
    horizon: float
    base: list[float] = field(default_factory=list)

    def programs(self) -> list[ProgramSpec]:
        return build_workload(self.questions, self.horizon, seed=self.config.seed, base=self.base or None)


_CACHE: dict[str, list[TraceQuestion]] = {}


def load_questions(traces: str, split: Split) -> list[TraceQuestion]:
    key = f"{traces}\0{split}"
    if key not in _CACHE:
        try:
            loaded = load_traces(traces)
        except OSError as exc:
            raise ValueError(f"cannot read the traces {traces!r}: {exc.strerror or exc}") from exc
        chosen = select_split(loaded, split)
        if not chosen:
            raise ValueError(f"{traces}: no questions in the {split!r} split")
        if not all(q.samples for q in chosen):
            raise ValueError(f"{traces}: every question needs recorded samples")
        _CACHE[key] = chosen
    return _CACHE[key]


def _base_job(context: _Context, start: int, stop: int) -> list[float]:
    c = context.config
    questions = load_questions(c.traces, c.split)
    programs = build_workload(questions, context.horizon, seed=c.seed)[start:stop]
    return measure_base(questions, programs, n=c.n, profile=c.profile, seed=c.replay_seed)


@dataclass(frozen=True)
class RunResult:
    """What one run gave: each program's outcome and the tokens the modelled GPU generated."""

    outcomes: list[ProgramOutcome]
    gpu_tokens: int  # including those of requests cancelled when their program stopped

    def figures(self, programs: Sequence[ProgramSpec], slo_scale: float) -> dict[str, Any]:
        """:func:`run_figures`, and ``gpu_tokens``: the GPU's tokens per program."""
        return {
            **run_figures(programs, self.outcomes, slo_scale),
            "gpu_tokens": self.gpu_tokens / max(len(self.outcomes), 1),
        }


Results = dict[tuple[str, float, float, bool], RunResult]
"""Each run's result by (policy, rate, SLO scale, alone)."""


def _run_job(context: _Context, run: RunSpec) -> tuple[RunSpec, RunResult, float]:
    c = context.config
    questions = load_questions(c.traces, c.split)
    programs = build_workload(questions, context.horizon, seed=c.seed, base=context.base)
    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    outcomes = simulate(questions, programs, run, metrics)
    return run, RunResult(outcomes, int(metrics["tokens_generated"])), time.perf_counter() - started


class Pool:
    """Jobs in worker processes (``jobs > 1``), or inline: the same results either way."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.executor: ProcessPoolExecutor | None = None
        if self.jobs > 1:
            import multiprocessing

            self.executor = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        if self.executor is None:
            return [fn(*call) for call in calls]
        futures = [self.executor.submit(fn, *call) for call in calls]
        return [f.result() for f in futures]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.executor is not None:
            return self.executor.submit(fn, *args)
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


@dataclass(frozen=True)
class Grid:
    """The runs' coordinates, the same in every replicate: rates (programs/s) and SLO scales."""

    rates: list[float]
    scales: list[float]
    ref_rate: float
    capacity: float


def run_replicate(
    config: OnlineConfig, questions: list[TraceQuestion], grid: Grid, pool: Pool, say: Callable[[str], None]
) -> dict[str, Any]:
    """One replicate: its workload (arrival seed), isolated latencies, both sweeps, its figures."""
    started = time.perf_counter()
    context = _Context(config, questions, max(grid.rates) * config.duration_s)
    workload = context.programs()
    say(
        f"{len(workload)} programs at most ({len(questions)} questions of {config.split}), capacity "
        f"{grid.capacity:.2f} programs/s, window {config.window}, {config.jobs} job(s)"
    )
    chunks = [(context, a, min(a + BASE_CHUNK, len(workload))) for a in range(0, len(workload), BASE_CHUNK)]
    context.base = [b for part in pool.map(_base_job, chunks) for b in part]
    workload = context.programs()
    say(f"isolated latencies measured ({time.perf_counter() - started:.0f} s)")
    results = _sweep(config, context, workload, pool, grid, say)
    return _replicate_figures(config, workload, results, grid)


def slo_floor(config: OnlineConfig, workload: Sequence[ProgramSpec], grid: Grid) -> dict[str, Any]:
    """The SLO scale below which no policy can keep 90% of the deadlines (``docs/online-benchmark.md``,
    *Floor*): each program of the reference rate answering with its question's shortest recorded sample,
    generated alone (one sequence, prompt already cached: every iteration at least ``a + b``)."""
    from ..replay import get_profile

    iteration_s = get_profile(config.profile).iteration_seconds(1, 0)
    programs = arriving(workload, grid.ref_rate, config.duration_s)  # those of the reference runs
    fastest = [min(s.num_tokens for s in p.question.samples[: config.n]) * iteration_s for p in programs]
    curve = [
        {
            "slo_scale": scale,
            "attainment": mean([t <= p.deadline(scale) for p, t in zip(programs, fastest, strict=True)]),
        }
        for scale in grid.scales
    ]
    return {"min_slo_scale_at_90": min_scale_at_90(curve), "slo_curve": curve}


def _sweep(
    config: OnlineConfig,
    context: _Context,
    workload: Sequence[ProgramSpec],
    pool: Pool,
    grid: Grid,
    say: Callable[[str], None],
) -> Results:
    """Every run: each policy's rate sweep in rising order (stopping after the first rate whose
    attainment is under STOP_BELOW; up to ``jobs`` rates of a policy run ahead), its SLO sweep and
    its SLO sweep with every program alone (one run each for the policies that do not know
    deadlines: attainment is counted afterwards)."""

    def spec(policy: str, rate: float, scale: float, alone: bool = False) -> RunSpec:
        if not POLICIES[policy].deadlines:
            scale = config.slo_scale  # runs the same whatever the scale
        return RunSpec(
            policy, rate, scale, config.window or 1, config.n, config.rule, config.profile,
            config.duration_s, config.replay_seed, alone,
        )  # fmt: skip

    results: Results = {}
    running: dict[Future[Any], RunSpec] = {}
    submitted: set[RunSpec] = set()
    stopped: dict[str, float] = {}  # policy -> the rate after which its sweep stops

    def submit(run: RunSpec) -> None:
        if run not in submitted:
            submitted.add(run)
            running[pool.submit(_run_job, context, run)] = run

    def top_up(policy: str) -> None:
        """Keep up to ``jobs`` of the policy's next rates running (none past a stopping rate)."""
        ahead = sum(
            r.policy == policy and r.slo_scale == config.slo_scale and not r.alone for r in running.values()
        )
        for rate in grid.rates:
            if ahead >= pool.jobs or rate > stopped.get(policy, math.inf):
                return
            run = spec(policy, rate, config.slo_scale)
            if run not in submitted:
                submit(run)
                ahead += 1

    for policy in config.policies:
        for scale in grid.scales if POLICIES[policy].deadlines else (config.slo_scale,):
            submit(spec(policy, grid.ref_rate, scale))
            submit(spec(policy, grid.ref_rate, scale, alone=True))
        top_up(policy)
    while running:
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            run = running.pop(future)
            _, result, wall = future.result()  # a failed run raises here: the benchmark fails
            results[(run.policy, run.rate, run.slo_scale, run.alone)] = result
            att = attainment(workload, result.outcomes, run.slo_scale)
            say(
                f"  {run.policy:<12} {'alone' if run.alone else f'{run.rate:7.2f}/s':>9}  SLO "
                f"x{run.slo_scale:<5g} {len(result.outcomes):5d} programs  attainment {att:6.1%}  "
                f"({wall:.1f} s)"
            )
            if run.slo_scale == config.slo_scale and att < STOP_BELOW and not run.alone:
                stopped[run.policy] = min(stopped.get(run.policy, math.inf), run.rate)
            top_up(run.policy)
    return results


def _curve_points(
    config: OnlineConfig,
    policy: str,
    workload: Sequence[ProgramSpec],
    results: Results,
    rates: Sequence[float],
    capacity: float,
) -> list[dict[str, Any]]:
    """The rate sweep's points up to the stopping rate (runs past it, done ahead, are kept too)."""
    scale = config.slo_scale
    points = []
    for rate in rates:
        result = results.get((policy, rate, scale, False))
        if result is None:
            continue
        points.append({"rate": rate, "rate_x": rate / capacity, **result.figures(workload, scale)})
    return points


def _slo_points(
    config: OnlineConfig,
    policy: str,
    workload: Sequence[ProgramSpec],
    results: Results,
    scales: Sequence[float],
    ref_rate: float,
    alone: bool = False,
) -> list[dict[str, Any]]:
    points = []
    for scale in scales:
        run_scale = scale if POLICIES[policy].deadlines else config.slo_scale
        result = results.get((policy, ref_rate, run_scale, alone))
        if result is None:
            continue
        points.append({"slo_scale": scale, "attainment": attainment(workload, result.outcomes, scale)})
    return points


def _replicate_figures(
    config: OnlineConfig,
    workload: Sequence[ProgramSpec],
    results: Results,
    grid: Grid,
) -> dict[str, Any]:
    """One replicate's figures: per policy the headline figures and both curves, the ratios to naive."""
    policies: dict[str, Any] = {}
    for name in config.policies:
        curve = _curve_points(config, name, workload, results, grid.rates, grid.capacity)
        slo_curve = _slo_points(config, name, workload, results, grid.scales, grid.ref_rate)
        alone_curve = _slo_points(config, name, workload, results, grid.scales, grid.ref_rate, alone=True)
        ref = results[(name, grid.ref_rate, config.slo_scale, False)].figures(workload, config.slo_scale)
        policies[name] = {
            "description": POLICIES[name].description,
            "max_rate_at_90": crossing_down([p["rate"] for p in curve], [p["attainment"] for p in curve]),
            "min_slo_scale_at_90": min_scale_at_90(slo_curve),
            "alone_min_slo_scale_at_90": min_scale_at_90(alone_curve),
            **ref,
            "curve": curve,
            "slo_curve": slo_curve,
            "alone_slo_curve": alone_curve,
        }
    naive = policies["naive"]
    ratios = {
        name: {
            "rate": ratio(f["max_rate_at_90"], naive["max_rate_at_90"]),
            "slo_scale": ratio(naive["min_slo_scale_at_90"], f["min_slo_scale_at_90"]),
        }
        for name, f in policies.items()
    }
    bases = [p.base_s for p in workload]
    return {
        "slo_floor": slo_floor(config, workload, grid),
        "seeds": {"arrivals": config.seed, "replay": config.replay_seed},
        "programs": len(workload),
        "policies": policies,
        "ratios": ratios,
        "base_latency_s": {
            "mean": sum(bases) / len(bases),
            "p10": percentile(bases, 0.1),
            "p90": percentile(bases, 0.9),
        },
        "difficulty": {
            "mean": sum(p.difficulty for p in workload) / len(workload),
            "max": max(p.difficulty for p in workload),
        },
    }
