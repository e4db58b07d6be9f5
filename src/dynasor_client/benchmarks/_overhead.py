"""``dynasor-client bench overhead``: what the runtime costs the client, in CPU and memory.

The client's CPU per request through the runtime against a plain ``openai.AsyncOpenAI`` loop, the
scheduler's decision time with many programs queued, and the memory per waiting program; what is
measured, how, and the JSON are in ``docs/overhead-benchmark.md``. The client's CPU (figure 1) is
measured in ``_overhead_client``; the scheduler (2) and the memory (3) here.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ._common import format_table, run_metadata
from ._overhead_client import TEMPERATURE, measure_client_overhead

__all__ = [
    "GOAL_DECISION_P50_US",
    "GOAL_RATIO",
    "measure_client_overhead",
    "measure_scheduler",
    "measure_waiting_memory",
    "overhead_table",
    "run_overhead_benchmark",
]

GOAL_RATIO = 1.15
GOAL_DECISION_P50_US = 50.0


# ---------------------------------------------------------------------------- 2. scheduler


def _records(programs: int, now: float, seed: int) -> list[Any]:
    """``programs`` records with varied prior, spending, certainty and (for a third) deadlines."""
    from ..budget import Account
    from ..runtime import ProgramRecord

    rng = random.Random(seed)
    out = []
    for i in range(programs):
        account = Account(None, spent=rng.randrange(0, 4000))
        if rng.random() < 0.5:
            account.steps, account.certainty = rng.randrange(1, 8), rng.random()
        deadline = now + rng.uniform(5.0, 120.0) if rng.random() < 0.33 else None
        out.append(
            ProgramRecord(
                f"prog-{i}", None, now - rng.uniform(0, 30), deadline, account, rng.uniform(500, 8000), 0.02
            )
        )
    return out


async def _scheduler_decisions(programs: int, decisions: int, window: int, seed: int) -> dict[str, Any]:
    from ..budget import BudgetManager
    from ..runtime import ProgramRecord, Scheduler, dynasor

    budget = BudgetManager(None, None)
    granted: list[ProgramRecord] = []

    def check(record: ProgramRecord) -> Any:  # as Runtime._may_dispatch, noting who was granted
        granted.append(record)
        return budget.may_dispatch(record.account)

    def clock() -> float:  # as Runtime.clock
        return asyncio.get_running_loop().time()

    scheduler = Scheduler(dynasor(), window=window, gang=True, clock=clock, check=check)
    records = _records(programs + window, clock(), seed)
    for record in records:  # the first `window` are granted at once, the rest queue behind them
        scheduler.acquire(record, 1)
    if scheduler.waiting != programs:
        raise RuntimeError(f"expected {programs} queued programs, found {scheduler.waiting}")
    granted.clear()
    rng = random.Random(seed + 1)
    warm = min(1000, decisions)
    release_ns: list[int] = []
    acquire_ns: list[int] = []
    timer = time.perf_counter_ns
    gc.collect()
    for i in range(warm + decisions):
        t0 = timer()
        scheduler.release(1)  # a request ended: the best waiting gang is dispatched
        t1 = timer()
        record = granted.pop()
        record.account.spent += rng.randrange(50, 400)  # its request's tokens, before its next one
        t2 = timer()
        scheduler.acquire(record, 1)  # its next request joins the queue
        t3 = timer()
        if i >= warm:
            release_ns.append(t1 - t0)
            acquire_ns.append(t3 - t2)
    if scheduler.waiting != programs:
        raise RuntimeError(f"the queue drifted to {scheduler.waiting} programs")
    total = sorted((a + b) / 1e3 for a, b in zip(release_ns, acquire_ns, strict=True))

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "policy": "dynasor() = shortest_remaining_work() + aging(0.5) + demote_infeasible()",
        "queued": programs,
        "window": window,
        "decisions": decisions,
        "p50_us": pct(total, 0.5),
        "p90_us": pct(total, 0.9),
        "p99_us": pct(total, 0.99),
        "mean_us": statistics.fmean(total),
        "dispatch_p50_us": statistics.median(release_ns) / 1e3,
        "enqueue_p50_us": statistics.median(acquire_ns) / 1e3,
    }


def measure_scheduler(
    programs: int = 10_000, *, decisions: int = 20_000, window: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Figure 2 (``docs/overhead-benchmark.md``): the time of one scheduling decision with
    ``programs`` queued."""
    if programs < 1 or decisions < 1 or window < 1:
        raise ValueError("programs, decisions and window must be >= 1")
    return asyncio.run(_scheduler_decisions(programs, decisions, window, seed))


# ---------------------------------------------------------------------------- 3. memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def _waiting_memory(programs: int, traced: bool) -> dict[str, Any]:
    from ..endpoints import Endpoint, SamplingParams
    from ..program import ProgramContext, ProgramResult, StopReason
    from ..replay import REPLAY_CAPABILITIES
    from ..runtime import Runtime, RuntimeContext

    # Nothing is ever sent: the window stays full, so no waiting program reaches HTTP.
    endpoint = Endpoint("http://127.0.0.1:9/v1", model="none", capabilities=REPLAY_CAPABILITIES)
    held, release = asyncio.Event(), asyncio.Event()
    params = SamplingParams(max_tokens=256, temperature=TEMPERATURE)

    async def hold(context: ProgramContext) -> ProgramResult:
        async with cast(RuntimeContext, context).request_slot(1):
            held.set()
            await release.wait()
        return ProgramResult(None, 0.0, context.usage, 0, StopReason.CAP, (), context.program_id)

    def make(index: int) -> Callable[[ProgramContext], Awaitable[ProgramResult]]:
        prompt = f"Question {index}: how much memory does a waiting program take?\nAnswer:"

        async def program(context: ProgramContext) -> ProgramResult:
            generation = await context.generate(prompt, params=params)
            return ProgramResult(
                generation.choices[0].text, 1.0, context.usage, 1, StopReason.CAP, (), context.program_id
            )

        return program

    made = [make(i) for i in range(programs)]  # the caller's closures are not the runtime's cost
    async with Runtime(endpoint, window=1) as runtime:
        runtime.submit(hold, program_id="holder")
        await held.wait()
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        if traced:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()
        handles = [runtime.submit(program) for program in made]
        while runtime.scheduler.waiting < programs:  # noqa: ASYNC110 - each task's first step queues it
            await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()
        if traced:
            tracemalloc.stop()
        waiting = runtime.scheduler.waiting
        runtime.cancel_all()
        release.set()
    await endpoint.aclose()
    del handles
    if before is None or after is None:
        return {"bytes_per_program": None, "waiting": waiting}
    return {
        "bytes_per_program": (after - before) / programs,
        "total_bytes": after - before,
        "waiting": waiting,
    }


def measure_waiting_memory(programs: int = 10_000) -> dict[str, Any]:
    """Figure 3 (``docs/overhead-benchmark.md``): bytes per program waiting for the scheduler."""
    if programs < 1:
        raise ValueError("programs must be >= 1")
    traced = asyncio.run(_waiting_memory(programs, traced=True))
    gc.collect()
    rss = asyncio.run(_waiting_memory(programs, traced=False))
    return {
        "programs": programs,
        "waiting": traced["waiting"],
        "bytes_per_program_tracemalloc": traced["bytes_per_program"],
        "bytes_per_program_rss": rss["bytes_per_program"],
        "program": "one generate() call, stopped waiting for the scheduler (window held full)",
    }


# ---------------------------------------------------------------------------- all of it


def run_overhead_benchmark(
    *,
    programs: int = 10_000,
    requests: int = 1000,
    stream_requests: int = 128,
    requests_per_program: int = 4,
    concurrency: int = 32,
    max_tokens: int = 128,
    repeats: int = 5,
    decisions: int = 20_000,
    seed: int = 0,
    quick: bool = False,
) -> dict[str, Any]:
    """The three figures of ``docs/overhead-benchmark.md``, with provenance. ``quick``: a smoke run
    (few requests, one repeat, fewer decisions), for tests: its figures are noisy."""
    started = time.perf_counter()
    if quick:
        requests, stream_requests = min(requests, 64), min(stream_requests, 16)
        repeats, decisions = 1, min(decisions, 2000)
    client = measure_client_overhead(
        requests=requests,
        stream_requests=stream_requests,
        requests_per_program=requests_per_program,
        concurrency=concurrency,
        max_tokens=max_tokens,
        repeats=repeats,
        seed=seed,
    )
    scheduler = measure_scheduler(programs, decisions=decisions, seed=seed)
    memory = measure_waiting_memory(programs)
    ratio, p50 = client["ratio"], scheduler["p50_us"]
    return {
        "client_overhead_ratio": ratio,
        "client_overhead_ratio_streaming": client["ratio_streaming"],
        "scheduler_decision_p50_us": p50,
        "scheduler_decision_p99_us": scheduler["p99_us"],
        "programs": programs,
        "bytes_per_waiting_program": memory["bytes_per_program_tracemalloc"],
        "goals": {"client_overhead_ratio": GOAL_RATIO, "scheduler_decision_p50_us": GOAL_DECISION_P50_US},
        "meets_goals": {
            "client_overhead_ratio": ratio is not None and ratio <= GOAL_RATIO,
            "scheduler_decision_p50_us": p50 <= GOAL_DECISION_P50_US,
        },
        "client": client,
        "scheduler": scheduler,
        "memory": memory,
        "settings": {
            "programs": programs,
            "requests": requests,
            "stream_requests": stream_requests,
            "requests_per_program": requests_per_program,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "repeats": repeats,
            "decisions": decisions,
            "seed": seed,
            "quick": quick,
        },
        **run_metadata(("openai", "httpx", "httpx2", "tenacity", "pydantic")),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def overhead_table(result: dict[str, Any]) -> str:
    """The figures as a plain-text table."""

    def num(value: Any, spec: str, unit: str = "") -> str:
        return "-" if value is None else format(value, spec) + unit

    client, scheduler, memory = result["client"], result["scheduler"], result["memory"]
    modes = client["modes"]
    rows: list[tuple[str, str, str]] = []
    for label, suffix, key, goal in (
        ("non-streaming", "", "client_overhead_ratio", f"<= {GOAL_RATIO:g}"),
        ("streaming", "_stream", "client_overhead_ratio_streaming", ""),
    ):
        base, run = modes.get(f"baseline{suffix}"), modes.get(f"runtime{suffix}")
        if base is None or run is None:
            continue
        for who, figures in (("AsyncOpenAI loop", base), ("Runtime + Endpoint", run)):
            cpu = num(figures["cpu_us_per_request"], ".0f", " us")
            rows.append((f"client CPU per request, {who} ({label})", cpu, ""))
        rows.append((f"client overhead ratio ({label})", num(result[key], ".3f"), goal))
    queued = f"{scheduler['queued']:,} queued"
    rows.append((f"scheduler decision p50 ({queued})", num(scheduler["p50_us"], ".1f", " us"),
                 f"<= {GOAL_DECISION_P50_US:g} us"))  # fmt: skip
    rows.append((f"scheduler decision p99 ({queued})", num(scheduler["p99_us"], ".1f", " us"), ""))
    rows.append(("  of which dispatch / enqueue (p50)", f"{scheduler['dispatch_p50_us']:.1f} / "
                 f"{scheduler['enqueue_p50_us']:.1f} us", ""))  # fmt: skip
    rows.append((f"memory per waiting program ({memory['programs']:,}; tracemalloc)",
                 num(memory["bytes_per_program_tracemalloc"], ",.0f", " B"), ""))  # fmt: skip
    rows.append(("memory per waiting program (RSS)", num(memory["bytes_per_program_rss"], ",.0f", " B"), ""))
    table = format_table(["figure", "value", "goal"], rows)
    settings = (
        f"{client['requests_per_run']} requests per non-streaming run, {client['stream_requests_per_run']} "
        f"per streaming run ({client['requests_per_program']} per program), concurrency "
        f"{client['concurrency']}, max_tokens {client['max_tokens']}, medians of {client['repeats']} "
        "interleaved runs"
    )
    return f"{table}\n{settings}"
