"""The online benchmark's workload: the policies compared, the arriving programs and their deadlines'
factors, and the modelled GPU's capacity (``docs/online-benchmark.md``: *Workload*, *Deadlines*,
*Policies*)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..traces import TraceQuestion

if TYPE_CHECKING:
    from ..endpoints import Endpoint
    from ..runtime import Runtime

__all__ = [
    "POLICIES",
    "OnlinePolicy",
    "ProgramSpec",
    "agreement",
    "arriving",
    "build_workload",
    "capacity_rate",
]


# -- the policies --


@dataclass(frozen=True)
class OnlinePolicy:
    """One configuration of the runtime (``docs/online-benchmark.md``, *Policies*)."""

    name: str
    description: str
    window: bool = True  # a client-side window (else: everything sent at once)
    gang: bool = True
    certaindex: bool = False  # stop early by the rule (else: all n samples in one request)
    order: Literal["fcfs", "srw", "dynasor"] = "fcfs"
    deadlines: bool = False  # the runtime knows the deadlines (cuts, demotes)
    racing: bool = False  # rounds read as the samples finish (RoundPlan's reading="finishing")

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
        OnlinePolicy(
            "ours+race",
            "ours with racing rounds: 2 samples past each check, read as they finish, the rest cancelled",
            certaindex=True,
            order="dynasor",
            deadlines=True,
            racing=True,
        ),
    )
}


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
    from ..calibration import default_cluster

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
    """Programs per second the modelled GPU serves at full ``n`` with a full batch (*Sweeps*)."""
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


def arriving(programs: Sequence[ProgramSpec], rate: float, duration_s: float) -> list[ProgramSpec]:
    """The programs that arrive within ``duration_s`` at ``rate`` (at least one)."""
    chosen = [p for p in programs if p.arrival(rate) < duration_s]
    return chosen or list(programs[:1])
