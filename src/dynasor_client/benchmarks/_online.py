"""``dynasor-client bench online``: deadline attainment of reasoning programs arriving online.

    dynasor-client bench online --traces svamp-codex-sc30.jsonl [--profile llama3-8b-h100-80gb] \\
        [--quick] [--seeds K] --json out.json [--plot out.png]

Programs (self-consistency over the traces' questions) arrive as a Poisson process and run through
the library's real :class:`~dynasor_client.runtime.Runtime` (scheduler, policies, budget, admission)
against the replay engine's timing model, in process, on a virtual clock
(:class:`~dynasor_client.replay.InProcessReplay` on :func:`~dynasor_client.replay.run_virtual`): a
modelled GPU second is one second of loop time, so minutes of GPU time take seconds of CPU, and the
client's own CPU costs nothing. ``tests/test_bench_online.py`` checks the simulation against the
HTTP :class:`~dynasor_client.replay.ReplayServer` in scaled real time on a small case (same answers,
tokens and stop reasons; latencies equal up to the client's CPU time).

**Workload.** Programs arrive for ``duration_s`` modelled seconds per run (30; 4 with ``--quick``),
then the run drains. Each picks a question of the evaluated split (``test`` by default: the
default stop rule was calibrated on SVAMP's train split) at random and is one self-consistency
program of at most ``n`` samples (30, or fewer when the traces hold fewer) with its own program id,
hence its own draws of the recorded samples (the replay engine draws by program, question and
server seed). Arrival times are the cumulative sums of unit exponential gaps divided by the rate,
so every rate and every policy sees the same programs in the same order (common random numbers:
the curves differ by policy, not by luck), and a higher rate only adds programs at the end. A
fixed duration, not a fixed count, keeps the comparison fair under overload: with a fixed count,
a faster rate means a shorter run whose queue has less time to grow, which flatters whichever
policy is measured at higher rates.

**Deadlines.** ``deadline = slo_scale x difficulty x base``:

- ``base``: the program's isolated latency at full ``n`` on the profile: the same program (same id,
  same draws) run alone, all ``n`` samples in one request, on an idle modelled GPU, measured once
  per benchmark in the simulation.
- ``difficulty`` = ``2 - agreement``, in [1, 2): ``agreement`` is the share of the question's
  recorded samples whose answer is the majority answer (answers grouped as calibration groups
  them; a sample without an answer agrees with nothing). A unanimous question gets its isolated
  latency times the SLO scale, the most contested ones up to twice that: a harder question
  warrants more sampling, and more time for it.

A program meets its deadline when it returns its own answer (not rejected by admission control,
not cut by its deadline) at most ``deadline`` after it arrived. Policies that do not know
deadlines are not given them (nothing is cut: attainment is counted afterwards); ``ours`` gives
them to the runtime, which cuts a late program (returning its best answer so far, counted as a
miss) and uses them to schedule.

**Policies** (all on the same runtime; ``window`` sequences in flight, see below):

- ``naive``: every program sends all ``n`` samples at once, no certaindex, no client window
  (``Runtime(window=None)``): the server serves requests first come, first served.
- ``gang``: app-level FIFO gang scheduling (Parrot-like): ``window``, ``fcfs()``, ``gang=True``,
  full ``n``.
- ``+certaindex``: ``gang`` with certaindex-driven early stopping (the stop ``rule``, rounds
  ``"auto"``: one round per point where the rule may fire).
- ``+srw``: ``+certaindex`` ordered by shortest remaining work (certaindex-estimated) with aging
  (``shortest_remaining_work() + aging(0.5)``).
- ``ours``: ``+srw`` plus deadline awareness: deadlines given to the runtime,
  ``demote_infeasible()`` in the policy (``dynasor()``), programs cut at their deadline, and
  deadline-aware rounds in the program (:class:`~dynasor_client.algorithms.RoundPlan`: the next
  rounds' requests go out ahead, 2 samples past the current check, and are read in order; when the
  time left holds fewer rounds than remain, more rounds go out at once; neither while the window
  is full; when a round is expected after the deadline, the program returns its answer so far at
  once, which counts as a miss, and cancels what it sent ahead). (So the ablation is naive, gang,
  +certaindex, +srw, ours = +deadline.)

**Sweeps.** Attainment against the arrival rate at ``slo_scale`` (default 3), and against the SLO
scale at ``ref_rate`` (default 0.75 x capacity: the naive server loaded but stable). Rates are
multiples of ``capacity``: the programs per second the modelled GPU serves at full ``n`` and a full
batch (``max_batch`` sequences of the mean context, the profile's cost model), so a multiple of 1
saturates the naive server. A policy's rate sweep stops after the first rate whose attainment is
under 50%. Both defaults were fixed before any policy was measured. Per policy:
``max_rate_at_90`` is the highest rate keeping 90% attainment (linear interpolation between the
last point at or above 90% and the next below it; the highest rate tried when every point keeps
90%, ``0`` when none does) and ``min_slo_scale_at_90`` the tightest SLO scale keeping it (likewise,
scanning down from the loosest scale). ``ratios`` divides each policy's figures by naive's (for the
SLO scale, naive's by the policy's: higher is better in both).

**Alone.** Each policy's SLO sweep is repeated with the same programs (those of the reference
rate) run one at a time on the idle modelled GPU, each after the previous one finished:
``alone_slo_curve`` and ``alone_min_slo_scale_at_90``. A program runs fastest alone, so this is
about the tightest SLO scale that policy's programs can meet under any scheduler (about: a program
that adapts to its deadline may choose differently under load; naive's is 1 by construction, as
``base`` is naive alone), and the gap to ``min_slo_scale_at_90`` is what sharing the GPU costs.

**Floor.** ``slo_floor``: for the same programs (those of the reference rate), the share whose
deadline would be met by the fastest answer possible on the profile: the question's shortest
recorded sample (of the ``n`` a program may draw), generated as the only sequence on the GPU with
its prompt already cached, so that each of its tokens takes at least one iteration of ``a + b``
(the cost model's fixed and per-sequence terms); ``slo_curve`` and ``min_slo_scale_at_90``. A
program that answers from a sample waits at least that long, so no policy, whatever it samples and
however it schedules, keeps 90% of the deadlines below this scale. It bounds the SLO ratio:
``ratios`` divides naive's scale by a policy's, so no ratio exceeds naive's scale over the floor
at this reference point.

**Figures** per policy at the reference point (``ref_rate``, ``slo_scale``): ``accuracy`` (graded
against the traces' gold as calibration grades; a program without an answer is wrong),
``latency_mean_s`` and ``latency_p90_s`` (modelled seconds from arrival to result, over the programs
that ran: a cut program's latency is its deadline), ``attainment``, ``tokens`` (mean generated in
the answers programs received), ``gpu_tokens`` (mean generated by the modelled GPU per program,
counting the work of requests cancelled when their program stopped or was cut: what the load is
made of), ``rejected`` and ``cut`` (fractions).

**Replicates** (``--seeds K``, default 1): the whole benchmark (workload, isolated latencies, both
sweeps) runs ``K`` times, replicate ``r`` with arrival seed ``seed + r`` and replay seed
``replay_seed + r``: other questions, arrival times and recorded samples drawn. The figures are then
the replicates' means; ``intervals`` holds 95% Student-t intervals of the headline figures and of
the ratios, each replicate's ratio taken against its own naive run (same programs, same draws);
curves are pointwise means over the rates and scales every replicate ran; ``by_seed`` keeps each
replicate's own figures and curves. One replicate takes about 6 minutes on 2 cores.

**Window.** At most ``window`` sequences in flight (a gang may overshoot it rather than be split).
Default: the profile's ``max_batch`` (256 on the Llama-3-8B profiles): the modelled GPU's batch
stays full whenever there is work, and nothing waits in the server's own FIFO queue, so the
client's order decides what runs next. A smaller window lets the order decide more often but
costs throughput: on the H100 profile an iteration of 128 sequences yields 0.73x the tokens/s of
256, and windows of 64 and 128 lowered every policy's attainment in trials.

**Rule.** ``--rule default`` (default): the library's calibrated multi-step rule
(:func:`~dynasor_client.certainty.default_rule`, calibrated on SVAMP train): the fewest tokens,
but up to seven sequential rounds, so without deadline-aware rounds (``+certaindex``, ``+srw``)
its latency tail misses tight deadlines. ``--rule paper``: the paper's static threshold (H~ >= 0.7
at 5 samples, else all 30: two rounds at most). Until deadline-aware rounds existed the default
was ``paper``; both are reported in the README.

**JSON**::

    {"benchmark": "online", "profile": str, "traces": str, "split": str, "n": int, "rule": str,
     "window": int, "programs": int, "capacity_rate": float, "ref_rate": float, "slo_scale": float,
     "policies": {NAME: {"description": str, "max_rate_at_90": float, "min_slo_scale_at_90": float,
                         "alone_min_slo_scale_at_90": float, "accuracy": float,
                         "latency_mean_s": float, "latency_p90_s": float, "attainment": float,
                         "tokens": float, "gpu_tokens": float, "rejected": float, "cut": float,
                         "curve": [{"rate", "rate_x", "attainment", "latency_mean_s", ...}],
                         "slo_curve": [{"slo_scale", "attainment"}],
                         "alone_slo_curve": [{"slo_scale", "attainment"}]}},
     "ratios": {NAME: {"rate": float, "slo_scale": float}}, "base_latency_s": {...}, "notes": [str],
     "slo_floor": {"min_slo_scale_at_90": float, "slo_curve": [{"slo_scale", "attainment"}]},
     "seeds": {"arrivals": int, "replay": int}, "replicates": int, "quick": bool,
     "versions": {...}, "commit": str | null, "machine": {...}, "elapsed_s": float}

With ``replicates > 1`` also ``"intervals": {NAME: {"max_rate_at_90", "min_slo_scale_at_90",
"alone_min_slo_scale_at_90", "accuracy", "rate_ratio", "slo_scale_ratio": [low, high]}}`` and
``"by_seed": [{"seeds", "programs", "policies", "ratios", "slo_floor"}]``; ``seeds`` is then
the first replicate's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..traces import Split, TraceQuestion, load_traces, select_split
from ._common import finish_command, format_table, pyplot, run_metadata, save_figure

if TYPE_CHECKING:
    from ..certainty import StopRule
    from ..endpoints import Endpoint
    from ..runtime import Program, Runtime

__all__ = [
    "POLICIES",
    "OnlinePolicy",
    "OnlineRunError",
    "ProgramOutcome",
    "ProgramSpec",
    "RunSpec",
    "add_online_parser",
    "build_workload",
    "capacity_rate",
    "crossing_down",
    "crossing_up",
    "drive",
    "online_command",
    "online_table",
    "plot_online",
    "run_online_benchmark",
    "simulate",
]

TARGET = 0.9  #: the attainment the headline figures keep
RuleName = str  # "paper", "default" or the path of a calibration JSON


class OnlineRunError(RuntimeError):
    """A simulated run failed (a program raised, or the replay refused a request): never hidden."""


# -- the policies --


@dataclass(frozen=True)
class OnlinePolicy:
    """One configuration of the runtime (see the module docs)."""

    name: str
    description: str
    window: bool = True  # a client-side window (else: everything sent at once)
    gang: bool = True
    certaindex: bool = False  # stop early by the rule (else: all n samples in one request)
    order: Literal["fcfs", "srw", "dynasor"] = "fcfs"
    deadlines: bool = False  # the runtime knows the deadlines (cuts, demotes)

    def runtime(self, endpoint: Endpoint, window: int) -> Runtime:
        from ..runtime import Runtime, aging, dynasor, fcfs, shortest_remaining_work

        policy = {
            "fcfs": fcfs,
            "srw": lambda: shortest_remaining_work() + aging(0.5),
            "dynasor": dynasor,
        }[self.order]()
        return Runtime(endpoint, window=window if self.window else None, gang=self.gang, policy=policy)


POLICIES: dict[str, OnlinePolicy] = {
    p.name: p
    for p in (
        OnlinePolicy(
            "naive",
            "all n samples at once, no client window: the server's FCFS (SGLang/vLLM as is)",
            window=False,
            gang=False,
        ),
        OnlinePolicy("gang", "app-FIFO gang scheduling (Parrot-like), window, full n"),
        OnlinePolicy("+certaindex", "gang + certaindex early stopping", certaindex=True),
        OnlinePolicy(
            "+srw", "+certaindex, shortest remaining work first (+ aging)", certaindex=True, order="srw"
        ),
        OnlinePolicy(
            "ours",
            "+srw + deadline awareness (runtime: demote infeasible, cut at the deadline; program: "
            "rounds sent ahead and fitted to the deadline)",
            certaindex=True,
            order="dynasor",
            deadlines=True,
        ),
    )
}


# -- the workload --


@dataclass(frozen=True)
class ProgramSpec:
    """One arriving program: its question, its place in the arrival process and its deadline's factors."""

    index: int
    program_id: str
    question: TraceQuestion
    unit_arrival: float  # arrival time at rate 1 (cumulative unit exponential gaps)
    difficulty: float
    base_s: float = math.nan  # isolated latency at full n (modelled seconds), set by measure_base

    def arrival(self, rate: float) -> float:
        return self.unit_arrival / rate

    def deadline(self, slo_scale: float) -> float:
        return slo_scale * self.difficulty * self.base_s


def agreement(question: TraceQuestion) -> float:
    """Share of the recorded samples whose answer is the majority answer (no answer agrees with none)."""
    from ..certainty.calibration._traces import default_cluster

    labels = default_cluster()([s.answer for s in question.samples])
    counts: dict[int, int] = {}
    for label in labels:
        if label >= 0:
            counts[label] = counts.get(label, 0) + 1
    return max(counts.values(), default=0) / max(len(labels), 1)


def build_workload(
    questions: Sequence[TraceQuestion],
    horizon: float,
    *,
    seed: int = 0,
    base: Sequence[float] | None = None,
) -> list[ProgramSpec]:
    """The programs arriving before ``horizon`` at rate 1 (questions chosen at random, with
    replacement); ``base`` sets their isolated latencies. The same seed gives the same programs,
    and a longer horizon only appends programs."""
    if not questions:
        raise ValueError("no questions to run")
    rng = random.Random(seed)
    difficulty: dict[str, float] = {}
    out: list[ProgramSpec] = []
    t = rng.expovariate(1.0)
    while t < horizon or not out:
        q = questions[rng.randrange(len(questions))]
        if q.id not in difficulty:
            difficulty[q.id] = 2.0 - agreement(q)
        i = len(out)
        b = math.nan if base is None or i >= len(base) else base[i]
        out.append(ProgramSpec(i, f"online-{seed}-{i}", q, t, difficulty[q.id], b))
        t += rng.expovariate(1.0)
    return out


def capacity_rate(questions: Sequence[TraceQuestion], n: int, profile: str) -> float:
    """Programs per second the modelled GPU serves at full ``n`` with a full batch (module docs)."""
    from ..replay import get_profile

    p = get_profile(profile)
    lengths = [s.num_tokens for q in questions for s in q.samples[:n]]
    if not lengths:
        raise ValueError("the traces hold no samples")
    prompts = [q.prompt_tokens or math.ceil(len(q.question) / 4) for q in questions]
    mean_len = sum(lengths) / len(lengths)
    context = sum(prompts) / len(prompts) + mean_len / 2
    tokens_per_s = p.decode_tokens_per_s(p.max_batch, context)
    return tokens_per_s / (min(n, max(len(q.samples) for q in questions)) * mean_len)


# -- one run --


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


def arriving(programs: Sequence[ProgramSpec], rate: float, duration_s: float) -> list[ProgramSpec]:
    """The programs that arrive within ``duration_s`` at ``rate`` (at least one)."""
    chosen = [p for p in programs if p.arrival(rate) < duration_s]
    return chosen or list(programs[:1])


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
    from ..certainty import default_rule
    from ..certainty.calibration import load_rule

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
    from ..runtime import as_program

    if policy.certaindex:
        return as_program(self_consistency, spec.question.question, n=n, rule=stop_rule(rule), rounds="auto")
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


# -- figures --


def attainment(
    programs: Sequence[ProgramSpec], outcomes: Sequence[ProgramOutcome], slo_scale: float
) -> float:
    """Fraction of the run's programs that met their deadline at ``slo_scale``."""
    if not outcomes:
        return math.nan
    met = sum(o.met(programs[o.index].deadline(slo_scale)) for o in outcomes)
    return met / len(outcomes)


def crossing_down(xs: Sequence[float], ys: Sequence[float], target: float = TARGET) -> float:
    """The largest x keeping ``y >= target`` on a curve that falls with x: interpolated between the
    last point at or above the target and the next one below it (scanning up from the smallest x);
    the largest x when every point is at or above it, 0 when the first is below it."""
    if not xs:
        return math.nan
    if ys[0] < target:
        return 0.0
    for k in range(1, len(xs)):
        if ys[k] < target:
            x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return float(xs[-1])


def crossing_up(xs: Sequence[float], ys: Sequence[float], target: float = TARGET) -> float:
    """The smallest x keeping ``y >= target`` on a curve that rises with x: interpolated between the
    point below the target and the next one (scanning down from the largest x); the smallest x when
    every point is at or above it, inf when the largest is below it."""
    if not xs:
        return math.nan
    if ys[-1] < target:
        return math.inf
    for k in range(len(xs) - 2, -1, -1):
        if ys[k] < target:
            x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return float(xs[0])


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_figures(
    programs: Sequence[ProgramSpec], outcomes: Sequence[ProgramOutcome], slo_scale: float
) -> dict[str, Any]:
    """Attainment, latency, accuracy and tokens of one run."""
    from ..certainty.calibration._traces import default_cluster, equivalence_from_cluster

    equivalent = equivalence_from_cluster(default_cluster())
    ran = [o for o in outcomes if o.stop_reason != "rejected"]
    latencies = [o.latency_s for o in ran]
    correct = sum(
        o.answer is not None and equivalent(o.answer, programs[o.index].question.gold) for o in outcomes
    )
    count = max(len(outcomes), 1)
    return {
        "programs": len(outcomes),
        "attainment": attainment(programs, outcomes, slo_scale),
        "accuracy": correct / count,
        "latency_mean_s": sum(latencies) / len(latencies) if latencies else math.nan,
        "latency_p90_s": _percentile(latencies, 0.9),
        "tokens": sum(o.tokens for o in outcomes) / count,
        "samples": sum(o.samples for o in outcomes) / count,
        "rejected": sum(o.stop_reason == "rejected" for o in outcomes) / count,
        "cut": sum(o.stop_reason == "deadline" for o in outcomes) / count,
    }


# -- the benchmark --

RATE_MULTIPLES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
SLO_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0)
QUICK_RATE_MULTIPLES = (0.5, 1.0, 2.0)
QUICK_SLO_SCALES = (1.0, 2.0, 4.0)
STOP_BELOW = 0.5  #: a policy's rate sweep stops after the first rate with attainment under this
BASE_CHUNK = 200  #: programs per isolated-latency measurement (fixed: results do not depend on --jobs)


@dataclass(frozen=True)
class OnlineConfig:
    """The settings of one benchmark (see the module docs and the CLI's help)."""

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


def _questions(traces: str, split: Split) -> list[TraceQuestion]:
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
    questions = _questions(c.traces, c.split)
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
    questions = _questions(c.traces, c.split)
    programs = build_workload(questions, context.horizon, seed=c.seed, base=context.base)
    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    outcomes = simulate(questions, programs, run, metrics)
    return run, RunResult(outcomes, int(metrics["tokens_generated"])), time.perf_counter() - started


class _Pool:
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


def run_online_benchmark(
    config: OnlineConfig, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the benchmark (module docs); raises ValueError on bad settings, OnlineRunError on a failed run."""
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
    questions = _questions(config.traces, config.split)
    n = min(config.n, min(len(q.samples) for q in questions))
    window = config.window or profile.max_batch
    capacity = capacity_rate(questions, n, config.profile)
    grid = _Grid(
        rates=[m * capacity for m in sorted(set(config.rate_multiples) | {config.ref_rate_x})],
        scales=sorted(set(config.slo_scales) | {config.slo_scale}),
        ref_rate=config.ref_rate_x * capacity,
        capacity=capacity,
    )
    config = _replace(config, n=n, window=window)
    pool = _Pool(config.jobs)
    replicates = []
    try:
        for r in range(config.seeds):
            replicate = _replace(config, seed=config.seed + r, replay_seed=config.replay_seed + r)
            if config.seeds > 1:
                say(f"replicate {r + 1} of {config.seeds}: seeds {replicate.seed} (arrivals), "
                    f"{replicate.replay_seed} (replay)")  # fmt: skip
            replicates.append(_replicate(replicate, questions, grid, pool, say))
    finally:
        pool.close()
    return _assemble(config, replicates, grid, started)


@dataclass(frozen=True)
class _Grid:
    """The runs' coordinates, the same in every replicate: rates (programs/s) and SLO scales."""

    rates: list[float]
    scales: list[float]
    ref_rate: float
    capacity: float


def _replicate(
    config: OnlineConfig, questions: list[TraceQuestion], grid: _Grid, pool: _Pool, say: Callable[[str], None]
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


def slo_floor(config: OnlineConfig, workload: Sequence[ProgramSpec], grid: _Grid) -> dict[str, Any]:
    """The SLO scale below which no policy can keep 90% of the deadlines (module docs, *Floor*):
    each program of the reference rate answering with its question's shortest recorded sample,
    generated alone (one sequence, prompt already cached: every iteration at least ``a + b``)."""
    from ..replay import get_profile

    iteration_s = get_profile(config.profile).iteration_seconds(1, 0)
    programs = arriving(workload, grid.ref_rate, config.duration_s)  # those of the reference runs
    fastest = [min(s.num_tokens for s in p.question.samples[: config.n]) * iteration_s for p in programs]
    curve = [
        {
            "slo_scale": scale,
            "attainment": _mean([t <= p.deadline(scale) for p, t in zip(programs, fastest, strict=True)]),
        }
        for scale in grid.scales
    ]
    return {"min_slo_scale_at_90": _min_scale_at_90(curve), "slo_curve": curve}


def _min_scale_at_90(slo_curve: Sequence[Mapping[str, Any]]) -> float:
    """The tightest SLO scale of an SLO curve that keeps 90% attainment (:func:`crossing_up`)."""
    return crossing_up([p["slo_scale"] for p in slo_curve], [p["attainment"] for p in slo_curve])


def _replace(config: OnlineConfig, **changes: Any) -> OnlineConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _sweep(
    config: OnlineConfig,
    context: _Context,
    workload: Sequence[ProgramSpec],
    pool: _Pool,
    grid: _Grid,
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


def _ratio(value: float, base: float) -> float:
    if not (math.isfinite(value) and math.isfinite(base)) or base <= 0:
        return math.nan
    return value / base


def _replicate_figures(
    config: OnlineConfig,
    workload: Sequence[ProgramSpec],
    results: Results,
    grid: _Grid,
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
            "min_slo_scale_at_90": _min_scale_at_90(slo_curve),
            "alone_min_slo_scale_at_90": _min_scale_at_90(alone_curve),
            **ref,
            "curve": curve,
            "slo_curve": slo_curve,
            "alone_slo_curve": alone_curve,
        }
    naive = policies["naive"]
    ratios = {
        name: {
            "rate": _ratio(f["max_rate_at_90"], naive["max_rate_at_90"]),
            "slo_scale": _ratio(naive["min_slo_scale_at_90"], f["min_slo_scale_at_90"]),
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
            "p10": _percentile(bases, 0.1),
            "p90": _percentile(bases, 0.9),
        },
        "difficulty": {
            "mean": sum(p.difficulty for p in workload) / len(workload),
            "max": max(p.difficulty for p in workload),
        },
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def interval95(values: Sequence[float]) -> tuple[float, float]:
    """Student-t 95% interval of the mean of ``values`` (replicates); NaNs when any is not finite
    or there are fewer than two."""
    from scipy import stats

    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    if len(set(values)) == 1:
        return values[0], values[0]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=_mean(values), scale=stats.sem(values))
    return float(low), float(high)


def _mean_points(curves: Sequence[Sequence[Mapping[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Pointwise means of the replicates' curves, at the ``key`` values every replicate ran."""
    common = set.intersection(*({p[key] for p in curve} for curve in curves))
    out = []
    for x in sorted(common):
        points = [next(p for p in curve if p[key] == x) for curve in curves]
        out.append({k: _mean([p[k] for p in points]) for k in points[0]})
    return out


def _combine(replicates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The replicates' figures as one: means, 95% intervals of the headline figures, mean curves."""
    if len(replicates) == 1:
        return {**replicates[0], "replicates": 1}
    scalar = (
        "max_rate_at_90", "min_slo_scale_at_90", "alone_min_slo_scale_at_90", "programs", "attainment",
        "accuracy", "latency_mean_s", "latency_p90_s", "tokens", "gpu_tokens", "samples", "rejected", "cut",
    )  # fmt: skip
    policies: dict[str, Any] = {}
    intervals: dict[str, Any] = {}
    for name, first in replicates[0]["policies"].items():
        each = [r["policies"][name] for r in replicates]
        policies[name] = {
            "description": first["description"],
            **{key: _mean([f[key] for f in each]) for key in scalar},
            "curve": _mean_points([f["curve"] for f in each], "rate"),
            "slo_curve": _mean_points([f["slo_curve"] for f in each], "slo_scale"),
            "alone_slo_curve": _mean_points([f["alone_slo_curve"] for f in each], "slo_scale"),
        }
        ratios = [r["ratios"][name] for r in replicates]
        intervals[name] = {
            **{key: interval95([f[key] for f in each]) for key in (*scalar[:3], "accuracy")},
            "rate_ratio": interval95([x["rate"] for x in ratios]),
            "slo_scale_ratio": interval95([x["slo_scale"] for x in ratios]),
        }
    return {
        "seeds": replicates[0]["seeds"],
        "replicates": len(replicates),
        # Ratios pair each replicate with its own naive run (same programs and draws), then average.
        "ratios": {
            name: {key: _mean([r["ratios"][name][key] for r in replicates]) for key in ("rate", "slo_scale")}
            for name in policies
        },
        "intervals": intervals,
        "programs": _mean([r["programs"] for r in replicates]),
        "policies": policies,
        "base_latency_s": {
            key: _mean([r["base_latency_s"][key] for r in replicates]) for key in ("mean", "p10", "p90")
        },
        "difficulty": {key: _mean([r["difficulty"][key] for r in replicates]) for key in ("mean", "max")},
        "slo_floor": {
            "min_slo_scale_at_90": _mean([r["slo_floor"]["min_slo_scale_at_90"] for r in replicates]),
            "slo_curve": _mean_points([r["slo_floor"]["slo_curve"] for r in replicates], "slo_scale"),
        },
        "by_seed": [
            {key: r[key] for key in ("seeds", "programs", "policies", "ratios", "slo_floor")}
            for r in replicates
        ],
    }


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
    config: OnlineConfig, replicates: Sequence[dict[str, Any]], grid: _Grid, started: float
) -> dict[str, Any]:
    combined = _combine(replicates)
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


# -- output --


def _num(value: Any, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def _pct(value: Any) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{100 * value:.1f}%"
    )


def _with_interval(value: Any, interval: Sequence[Any] | None, suffix: str = "") -> str:
    """``value`` and, from replicates, the half-width of its 95% interval (``1.23x ±0.10``)."""
    text = _num(value) + suffix
    if interval is None:
        return text
    low, high = interval
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{text} ±?"
    return f"{text} ±{(high - low) / 2:.2f}"


def _scale_points(slo_curve: Sequence[Mapping[str, Any]]) -> str:
    return " ".join(f"x{p['slo_scale']:g}:{100 * p['attainment']:.0f}%" for p in slo_curve)


def online_table(result: Mapping[str, Any]) -> str:
    """The figures as a readable table (and the attainment curves, compactly)."""
    ratios = result["ratios"]
    intervals = result.get("intervals") or {}
    rows = []
    for name, f in result["policies"].items():
        ci = intervals.get(name, {})
        rows.append(
            [
                name,
                _with_interval(f["max_rate_at_90"], ci.get("max_rate_at_90")),
                _with_interval(ratios[name]["rate"], ci.get("rate_ratio"), "x"),
                _with_interval(f["min_slo_scale_at_90"], ci.get("min_slo_scale_at_90")),
                _with_interval(ratios[name]["slo_scale"], ci.get("slo_scale_ratio"), "x"),
                _with_interval(f["alone_min_slo_scale_at_90"], ci.get("alone_min_slo_scale_at_90")),
                _pct(f["attainment"]),
                _pct(f["accuracy"]),
                _num(f["latency_mean_s"]),
                _num(f["latency_p90_s"]),
                _num(f["tokens"], ".0f"),
                _num(f["gpu_tokens"], ".0f"),
                _pct(f["cut"] + f["rejected"]),
            ]
        )
    head = (
        f"bench online: self-consistency (n={result['n']}, rule {result['rule']!r}) on {result['traces']} "
        f"({result['split']}), profile {result['profile']}, window {result['window']} sequences; "
        f"arrivals for {result['duration_s']:g} s per run; capacity (naive, full batch) "
        f"{result['capacity_rate']:.2f} programs/s"
    )
    table = format_table(
        [
            "policy", "rate@90%", "vs naive", "SLO@90%", "vs naive", "alone", "attain", "accuracy",
            "lat mean", "lat p90", "tokens", "GPU tok", "cut/rej",
        ],
        rows,
    )  # fmt: skip
    reference = (
        f"attainment, accuracy, latency (modelled s), tokens and cut/rejected at the reference point: "
        f"{result['ref_rate']:.2f} programs/s, SLO scale {result['slo_scale']:g}; rate@90% at SLO scale "
        f"{result['slo_scale']:g}; SLO@90% at {result['ref_rate']:.2f} programs/s; alone: SLO@90% with "
        "each of those programs run alone on the idle GPU (the bound of that policy's programs)"
    )
    replicates = result.get("replicates", 1)
    if replicates > 1:
        first = result["seeds"]["arrivals"]
        reference += (
            f"\nmeans of {replicates} replicates (arrival and replay seeds {first}.."
            f"{first + replicates - 1}), ± the half-width of the 95% interval (Student t); ratios pair "
            "each replicate with its own naive run; curves are pointwise means"
        )
    curves = []
    for name, f in result["policies"].items():
        points = " ".join(f"{p['rate']:.1f}:{100 * p['attainment']:.0f}%" for p in f["curve"])
        curves.append(f"  {name:<12} rate  {points}")
    for name, f in result["policies"].items():
        curves.append(f"  {name:<12} SLO   {_scale_points(f['slo_curve'])}")
    for name, f in result["policies"].items():
        curves.append(f"  {name:<12} alone {_scale_points(f['alone_slo_curve'])}")
    floor = result["slo_floor"]
    curves.append(f"  {'floor':<12} alone {_scale_points(floor['slo_curve'])}")
    reference += (
        f"\nfloor: SLO scale {_num(floor['min_slo_scale_at_90'])} at 90% with each program's shortest "
        "recorded sample generated alone: no policy that answers from a sample can go below it"
    )
    lines = [head, table, reference, "attainment curves:", *curves]
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"({result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def plot_online(result: Mapping[str, Any], path: str | Path) -> None:
    """Attainment against the arrival rate and against the SLO scale, one line per policy (PNG)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    try:
        markers = "osD^v<>pP*Xh"
        for i, (name, f) in enumerate(result["policies"].items()):
            style = {"marker": markers[i % len(markers)], "markersize": 4, "linewidth": 1.4, "label": name}
            left.plot([p["rate"] for p in f["curve"]], [p["attainment"] for p in f["curve"]], **style)
            right.plot(
                [p["slo_scale"] for p in f["slo_curve"]], [p["attainment"] for p in f["slo_curve"]], **style
            )
            if name in ("naive", "ours"):  # the bounds of the two headline policies, dashed
                alone = f["alone_slo_curve"]
                style = {**style, "linestyle": "--", "linewidth": 1.0, "label": f"{name}, each alone"}
                right.plot([p["slo_scale"] for p in alone], [p["attainment"] for p in alone], **style)
        floor = result["slo_floor"]["slo_curve"]
        right.plot(
            [p["slo_scale"] for p in floor], [p["attainment"] for p in floor],
            color="0.3", linestyle=":", linewidth=1.2, label="floor: shortest sample, alone",
        )  # fmt: skip
        for ax in (left, right):
            ax.axhline(TARGET, color="0.5", linestyle=":", linewidth=1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("deadline attainment")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        left.set_xlabel(f"arrival rate (programs/s), SLO scale {result['slo_scale']:g}")
        right.set_xlabel(f"SLO scale, {result['ref_rate']:.2f} programs/s")
        right.set_xscale("log")
        fig.suptitle(
            f"{result['traces']} on {result['profile']} (window {result['window']}, rule {result['rule']})",
            fontsize=10,
        )
        save_figure(fig, path)
    finally:
        plt.close(fig)


# -- CLI --


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_online_parser(bench_sub: Any) -> argparse.ArgumentParser:
    """``bench online`` under the ``bench`` subcommand's subparsers."""
    parser: argparse.ArgumentParser = bench_sub.add_parser(
        "online",
        help="deadline attainment of programs arriving online: naive, gang, certaindex, SRW, deadlines",
        description="Poisson arrivals of self-consistency programs through the real runtime against the "
        "replay engine's timing model on a virtual clock; see dynasor_client.benchmarks._online.",
    )
    parser.add_argument("--traces", required=True, help="traces file (JSON lines, shared/data/traces format)")
    parser.add_argument("--profile", default="llama3-8b-h100-80gb", help="GPU profile name or JSON file")
    parser.add_argument("--json", dest="json_out", required=True, help="write the figures here (JSON)")
    parser.add_argument("--plot", default=None, help="draw attainment curves here (PNG; needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="few programs, rates and SLO scales (smoke run)")
    parser.add_argument("--split", choices=["train", "test", "all"], default="test", help="questions asked")
    parser.add_argument(
        "--rule", default="default", help="certaindex stop rule: default, paper or a calibration JSON file"
    )
    parser.add_argument("-n", type=int, default=30, help="samples per program at most (full budget)")
    parser.add_argument("--window", type=int, default=None, help="sequences in flight (default: max_batch)")
    parser.add_argument("--duration", type=float, default=None, help="modelled seconds of arrivals per run")
    parser.add_argument("--slo-scale", type=float, default=3.0, help="SLO scale of the rate sweep")
    parser.add_argument(
        "--ref-rate", type=float, default=0.75, help="rate of the SLO sweep, as a multiple of the capacity"
    )
    parser.add_argument("--rates", type=_floats, default=None, help="rates as multiples of the capacity")
    parser.add_argument("--slo-scales", type=_floats, default=None, help="SLO scales of the SLO sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals and question choices")
    parser.add_argument("--replay-seed", type=int, default=0, help="seed of the replay server's draws")
    parser.add_argument(
        "--seeds", type=int, default=1,
        help="replicates: repeat everything with seeds +1, +2, ... and report means with 95%% intervals",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: the available CPUs, at most 2)"
    )
    return parser


def online_config(args: argparse.Namespace) -> OnlineConfig:
    """The settings from the parsed CLI arguments (``--quick`` shrinks the defaults)."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    quick = bool(args.quick)
    default_duration = 4.0 if quick else 30.0
    return OnlineConfig(
        traces=args.traces,
        profile=args.profile,
        split=args.split,
        n=args.n,
        rule=args.rule,
        window=args.window,
        duration_s=args.duration or default_duration,
        slo_scale=args.slo_scale,
        ref_rate_x=args.ref_rate,
        rate_multiples=args.rates or (QUICK_RATE_MULTIPLES if quick else RATE_MULTIPLES),
        slo_scales=args.slo_scales or (QUICK_SLO_SCALES if quick else SLO_SCALES),
        seed=args.seed,
        replay_seed=args.replay_seed,
        seeds=args.seeds,
        jobs=args.jobs or (1 if quick else min(2, available)),
        quick=quick,
    )


def online_command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON (and plot). Failures raise ValueError."""
    import sys

    config = online_config(args)
    try:
        result = run_online_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except OnlineRunError as exc:
        raise ValueError(f"a benchmark run failed: {exc}") from exc
    return finish_command(result, online_table(result), args.json_out, plot=plot_online, plot_path=args.plot)
