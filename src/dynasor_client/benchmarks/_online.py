"""``dynasor-client bench online``: deadline attainment of reasoning programs arriving online.

Poisson arrivals of self-consistency programs through the real runtime against the replay engine's
timing model on a virtual clock; the methods, figures and JSON are in ``docs/online-benchmark.md``.
By job: ``_online_workload``, ``_online_simulate``, ``_online_sweep``, ``_online_stats``, ``_online_report``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import run_metadata
from ._online_report import online_table, plot_online
from ._online_simulate import (
    OnlineRunError,
    ProgramOutcome,
    RunSpec,
    drive,
    measure_base,
    simulate,
    stop_rule,
)
from ._online_stats import TARGET, combine_replicates, crossing_down, crossing_up, interval95
from ._online_sweep import (
    QUICK_RATE_MULTIPLES,
    QUICK_SLO_SCALES,
    RATE_MULTIPLES,
    SLO_SCALES,
    Grid,
    OnlineConfig,
    Pool,
    load_questions,
    run_replicate,
    slo_floor,
)
from ._online_workload import POLICIES, OnlinePolicy, ProgramSpec, build_workload, capacity_rate

__all__ = [
    "POLICIES",
    "OnlineConfig",
    "OnlinePolicy",
    "OnlineRunError",
    "ProgramOutcome",
    "ProgramSpec",
    "RunSpec",
    "build_workload",
    "capacity_rate",
    "crossing_down",
    "crossing_up",
    "drive",
    "interval95",
    "measure_base",
    "online_config",
    "online_table",
    "plot_online",
    "run_online_benchmark",
    "simulate",
    "slo_floor",
]


def run_online_benchmark(
    config: OnlineConfig, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the benchmark (``docs/online-benchmark.md``); raises ValueError on bad settings,
    OnlineRunError on a failed run."""
    from ..replay import get_profile

    started = time.perf_counter()
    say = progress or (lambda _: None)
    unknown = [p for p in config.policies if p not in POLICIES]
    if unknown or "naive" not in config.policies:
        raise ValueError(
            f"policies must include 'naive' and be among {list(POLICIES)}, got {list(config.policies)}"
        )
    if config.n < 1 or config.duration_s <= 0 or config.slo_scale <= 0 or config.ref_rate_x <= 0:
        raise ValueError("n, duration, SLO scale and reference rate must be positive")
    if config.seeds < 1:
        raise ValueError(f"seeds (replicates) must be >= 1, got {config.seeds}")
    stop_rule(config.rule)
    profile = get_profile(config.profile)  # a bad name fails here, with the list of profiles
    questions = load_questions(config.traces, config.split)
    n = min(config.n, min(len(q.samples) for q in questions))
    window = config.window or profile.max_batch
    capacity = capacity_rate(questions, n, config.profile)
    grid = Grid(
        rates=[m * capacity for m in sorted(set(config.rate_multiples) | {config.ref_rate_x})],
        scales=sorted(set(config.slo_scales) | {config.slo_scale}),
        ref_rate=config.ref_rate_x * capacity,
        capacity=capacity,
    )
    config = dataclasses.replace(config, n=n, window=window)
    pool = Pool(config.jobs)
    replicates = []
    try:
        for r in range(config.seeds):
            replicate = dataclasses.replace(config, seed=config.seed + r, replay_seed=config.replay_seed + r)
            if config.seeds > 1:
                say(f"replicate {r + 1} of {config.seeds}: seeds {replicate.seed} (arrivals), "
                    f"{replicate.replay_seed} (replay)")  # fmt: skip
            replicates.append(run_replicate(replicate, questions, grid, pool, say))
    finally:
        pool.close()
    return _assemble(config, replicates, grid, started)


def _notes(replicates: Sequence[Mapping[str, Any]]) -> list[str]:
    notes: list[str] = []
    for replicate in replicates:
        seed = f" (arrival seed {replicate['seeds']['arrivals']})" if len(replicates) > 1 else ""
        for name, f in replicate["policies"].items():
            if f["curve"] and f["curve"][-1]["attainment"] >= TARGET:
                bound = "max_rate_at_90 is a lower bound"
                notes.append(f"{name} kept 90% at the highest rate tried{seed}: {bound}")
            if f["slo_curve"] and f["slo_curve"][0]["attainment"] >= TARGET:
                bound = "min_slo_scale_at_90 is an upper bound"
                notes.append(f"{name} kept 90% at the tightest SLO scale tried{seed}: {bound}")
    return notes


def _assemble(
    config: OnlineConfig, replicates: Sequence[dict[str, Any]], grid: Grid, started: float
) -> dict[str, Any]:
    combined = combine_replicates(replicates)
    return {
        "benchmark": "online",
        "profile": config.profile,
        "traces": Path(config.traces).name,
        "split": config.split,
        "n": config.n,
        "rule": config.rule,
        "window": config.window,
        "duration_s": config.duration_s,
        "capacity_rate": grid.capacity,
        "ref_rate": grid.ref_rate,
        "slo_scale": config.slo_scale,
        "target": TARGET,
        "quick": config.quick,
        **combined,
        "notes": _notes(replicates),
        **run_metadata(),
        "elapsed_s": time.perf_counter() - started,
    }


def online_config(
    traces: str,
    *,
    quick: bool = False,
    duration_s: float | None = None,
    rate_multiples: tuple[float, ...] | None = None,
    slo_scales: tuple[float, ...] | None = None,
    jobs: int | None = None,
    **settings: Any,
) -> OnlineConfig:
    """The settings of ``dynasor-client bench online``: ``quick`` shrinks the defaults (4 modelled
    seconds of arrivals per run instead of 30, 3 rates and 3 SLO scales, one job); ``jobs`` defaults
    to the available CPUs, at most 2; ``settings`` are the other fields of :class:`OnlineConfig`."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return OnlineConfig(
        traces=traces,
        duration_s=duration_s or (4.0 if quick else 30.0),
        rate_multiples=rate_multiples or (QUICK_RATE_MULTIPLES if quick else RATE_MULTIPLES),
        slo_scales=slo_scales or (QUICK_SLO_SCALES if quick else SLO_SCALES),
        jobs=jobs or (1 if quick else min(2, available)),
        quick=quick,
        **settings,
    )
