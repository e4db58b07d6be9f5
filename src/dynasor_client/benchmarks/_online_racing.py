"""``dynasor-client bench racing``: what racing rounds (samples read as they finish) do to
self-consistency's answers, per dataset (``docs/online-benchmark.md``, *Racing*).

Each question's program runs alone on the replay engine's timing model (virtual clock, an idle
modelled GPU), once reading its samples in the planned order and once in finishing order, with the
same program id and replay seed: the same recorded samples are drawn, only the order the stop
rule reads them in differs (and, racing, the samples sent past a check that stops). On this model
samples sent together finish in the order of their lengths, so racing favours short samples.
Replicates (``seeds``) draw other samples; the difference in accuracy is paired by replicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..traces import Split
from ._common import format_table, run_metadata
from ._online_simulate import OnlineRunError, stop_rule
from ._online_stats import interval95, mean
from ._online_sweep import Pool, load_questions

__all__ = ["RacingConfig", "racing_table", "run_racing_benchmark"]

Reading = Literal["planned", "finishing"]
READINGS: tuple[Reading, ...] = ("planned", "finishing")


@dataclass(frozen=True)
class RacingConfig:
    """The settings of ``bench racing``: the traces files (one dataset each) and how to run them."""

    traces: tuple[str, ...]
    profile: str = "llama3-8b-h100-80gb"
    split: Split = "all"  # the reading's effect is not fitted to anything: every question counts
    n: int = 30  # at most; fewer when a file's questions hold fewer samples
    rule: str = "default"
    lookahead: int | None = None  # racing: samples past each check (None: the library's default)
    seeds: int = 5
    seed: int = 0
    jobs: int = 1


@dataclass(frozen=True)
class _Outcome:
    correct: bool
    tokens: int  # generated in the samples the program read
    samples: int
    latency_s: float


def _run(config: RacingConfig, traces: str, seed: int, reading: Reading) -> tuple[list[_Outcome], int]:
    """Every question of ``traces`` alone, one after the other: outcomes and the GPU's tokens."""
    from ..algorithms import self_consistency
    from ..calibration import default_cluster, equivalence_from_cluster
    from ..program import as_program
    from ..replay import InProcessReplay, run_virtual
    from ..runtime import Runtime

    questions = load_questions(traces, config.split)
    n = min(config.n, min(len(q.samples) for q in questions))
    rule = stop_rule(config.rule)
    equivalent = equivalence_from_cluster(default_cluster())

    async def main() -> tuple[list[_Outcome], int]:
        loop = asyncio.get_running_loop()
        out = []
        async with (
            InProcessReplay(questions, profile=config.profile, seed=seed) as replay,
            replay.endpoint(max_in_flight=100_000) as endpoint,
            Runtime(endpoint, window=None) as runtime,
        ):
            for index, question in enumerate(questions):
                program = as_program(
                    self_consistency,
                    question.question,
                    n=n,
                    rule=rule,
                    reading=reading,
                    lookahead=config.lookahead,
                )
                started = loop.time()
                try:
                    result = await runtime.run(program, program_id=f"racing-{index}")
                except Exception as exc:
                    raise OnlineRunError(f"{Path(traces).name} question {index} ({reading}): {exc}") from exc
                correct = result.answer is not None and equivalent(result.answer, question.gold)
                out.append(
                    _Outcome(correct, result.tokens.generated, len(result.answers), loop.time() - started)
                )
                await asyncio.sleep(1.0)  # idle: the engine takes in the aborts, the next starts alone
            return out, int(replay.metrics()["tokens_generated"])

    return run_virtual(main())


def run_racing_benchmark(
    config: RacingConfig, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run ``bench racing``; raises ValueError on bad settings, OnlineRunError on a failed run."""
    started = time.perf_counter()
    say = progress or (lambda _: None)
    if not config.traces or config.seeds < 1 or config.n < 1:
        raise ValueError("bench racing needs traces files, seeds >= 1 and n >= 1")
    if config.lookahead is not None and config.lookahead < 0:
        raise ValueError(f"lookahead must be >= 0, got {config.lookahead}")
    stop_rule(config.rule)
    for traces in config.traces:
        load_questions(traces, config.split)  # a bad file fails here, before any run
    calls = [
        (config, traces, config.seed + r, reading)
        for traces in config.traces
        for r in range(config.seeds)
        for reading in READINGS
    ]
    pool = Pool(config.jobs)
    try:
        runs = pool.map(_run, calls)
    finally:
        pool.close()
    results = dict(zip(((c[1], c[2], c[3]) for c in calls), runs, strict=True))
    datasets = {}
    for traces in config.traces:
        questions = load_questions(traces, config.split)
        seeds = [config.seed + r for r in range(config.seeds)]
        per: dict[str, Any] = {}
        for reading in READINGS:
            each = [_figures(*results[(traces, s, reading)]) for s in seeds]
            per[reading] = {
                **{key: mean([f[key] for f in each]) for key in each[0]},
                "accuracy_interval": interval95([f["accuracy"] for f in each]),
                "by_seed": each,
            }
        gain = [
            per["finishing"]["by_seed"][i]["accuracy"] - per["planned"]["by_seed"][i]["accuracy"]
            for i in range(len(seeds))
        ]
        name = Path(traces).name
        datasets[name] = {
            "questions": len(questions),
            "n": min(config.n, min(len(q.samples) for q in questions)),
            **per,
            "accuracy_change": mean(gain),
            "accuracy_change_interval": interval95(gain),
            "latency_ratio": per["finishing"]["latency_mean_s"] / per["planned"]["latency_mean_s"],
        }
        say(
            f"{name}: accuracy {per['planned']['accuracy']:.2%} planned, "
            f"{per['finishing']['accuracy']:.2%} racing"
        )
    return {
        "benchmark": "racing",
        "profile": config.profile,
        "split": config.split,
        "rule": config.rule,
        "lookahead": config.lookahead,
        "seeds": {"replay": config.seed, "replicates": config.seeds},
        "datasets": datasets,
        **run_metadata(),
        "elapsed_s": time.perf_counter() - started,
    }


def _figures(outcomes: Sequence[_Outcome], gpu_tokens: int) -> dict[str, float]:
    count = max(len(outcomes), 1)
    return {
        "accuracy": sum(o.correct for o in outcomes) / count,
        "tokens": sum(o.tokens for o in outcomes) / count,
        "gpu_tokens": gpu_tokens / count,
        "samples": sum(o.samples for o in outcomes) / count,
        "latency_mean_s": sum(o.latency_s for o in outcomes) / count,
    }


def racing_table(result: dict[str, Any]) -> str:
    """Per dataset: accuracy, tokens and latency alone, planned order against finishing order."""
    rows = []
    for name, d in result["datasets"].items():
        low, high = d["accuracy_change_interval"]
        half = (high - low) / 2 if low == low and high == high else float("nan")
        for reading in READINGS:
            f = d[reading]
            rows.append(
                [
                    name if reading == "planned" else "",
                    "planned" if reading == "planned" else "racing",
                    f"{100 * f['accuracy']:.2f}%",
                    f"{100 * d['accuracy_change']:+.2f} ±{100 * half:.2f} pt"
                    if reading == "finishing"
                    else "",
                    f"{f['tokens']:.0f}",
                    f"{f['gpu_tokens']:.0f}",
                    f"{f['samples']:.2f}",
                    f"{f['latency_mean_s']:.2f}",
                ]
            )
    seeds = result["seeds"]["replicates"]
    return "\n".join(
        [
            format_table(
                [
                    "traces",
                    "reading",
                    "accuracy",
                    "change (95%)",
                    "tokens",
                    "GPU tok",
                    "samples",
                    "latency s",
                ],
                rows,
                left=2,
            ),
            f"each question alone on the idle modelled GPU ({result['profile']}), split {result['split']}, "
            f"rule {result['rule']}; means over {seeds} replay seeds; change: racing minus planned, "
            "paired by seed",
        ]
    )
