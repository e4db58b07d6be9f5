"""``dynasor-client bench overhead``: what the runtime costs the client, in CPU and memory.

The client's CPU per request through the runtime against a plain ``openai.AsyncOpenAI`` loop, the
scheduler's decision time with many programs queued, and the memory per waiting program; what is
measured, how, and the JSON are in ``docs/overhead-benchmark.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ._common import finish_command, format_table, run_metadata

__all__ = [
    "GOAL_DECISION_P50_US",
    "GOAL_RATIO",
    "add_overhead_parser",
    "measure_client_overhead",
    "measure_scheduler",
    "measure_waiting_memory",
    "overhead_command",
    "overhead_table",
    "run_overhead_benchmark",
]

GOAL_RATIO = 1.15
GOAL_DECISION_P50_US = 50.0
_PROFILE = "llama3-8b-h100-80gb"
_TEMPERATURE = 0.7
MODES = ("baseline", "runtime", "baseline_stream", "runtime_stream")


@dataclass(frozen=True)
class _Load:
    """The requests of one timed run."""

    prompts: tuple[str, ...]  # one per program (programs cycle through the questions)
    requests_per_program: int
    concurrency: int
    max_tokens: int

    @property
    def requests(self) -> int:
        return len(self.prompts) * self.requests_per_program


# ---------------------------------------------------------------------------- the replay server


@contextlib.contextmanager
def _replay_server(
    traces: Path, flush_interval_s: float
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """``dynasor-client serve-replay`` in a child process: yields (base URL, model, process)."""
    from ._replay import child_server, free_port

    port = free_port()
    argv = [
        "-m", "dynasor_client", "serve-replay", "--traces", str(traces),
        "--port", str(port), "--profile", _PROFILE, "--time-scale", "0",
        "--flush-interval", repr(flush_interval_s),
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"

    def model() -> str:
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            return str(json.loads(response.read())["data"][0]["id"])

    with child_server(argv, traces.parent / "server.log", model) as (process, served):
        yield base_url, served, process


# ---------------------------------------------------------------------------- 1. client CPU


async def _baseline_run(client: Any, model: str, load: _Load, stream: bool, tag: str) -> int:
    """The plain SDK loop: one task per program, its requests in sequence, ``concurrency`` in flight."""
    slots = asyncio.Semaphore(load.concurrency)
    chunks = 0

    async def program(index: int, prompt: str) -> str:
        nonlocal chunks
        headers = {"X-Program-Id": f"{tag}-{index}"}
        text = ""
        for _ in range(load.requests_per_program):
            async with slots:
                if stream:
                    response = await client.completions.create(
                        model=model, prompt=prompt, n=1, max_tokens=load.max_tokens,
                        temperature=_TEMPERATURE, stream=True, stream_options={"include_usage": True},
                        extra_headers=headers,
                    )  # fmt: skip
                    parts = []
                    async for chunk in response:
                        chunks += 1
                        if chunk.choices:
                            parts.append(chunk.choices[0].text)
                    text = "".join(parts)
                else:
                    completion = await client.completions.create(
                        model=model, prompt=prompt, n=1, max_tokens=load.max_tokens,
                        temperature=_TEMPERATURE, extra_headers=headers,
                    )  # fmt: skip
                    chunks += 1
                    text = completion.choices[0].text
        return text

    async with asyncio.TaskGroup() as group:
        for index, prompt in enumerate(load.prompts):
            group.create_task(program(index, prompt))
    return chunks


async def _runtime_run(endpoint: Any, load: _Load, stream: bool, tag: str) -> int:
    """The same programs through the runtime (window = concurrency, default policy, events on)."""
    from ..endpoints import SamplingParams
    from ..program import ProgramContext, ProgramResult, StopReason
    from ..runtime import Runtime

    endpoint.stream = stream
    params = SamplingParams(max_tokens=load.max_tokens, temperature=_TEMPERATURE)
    requests = load.requests_per_program

    def make(prompt: str) -> Callable[[ProgramContext], Awaitable[ProgramResult]]:
        async def program(context: ProgramContext) -> ProgramResult:
            text = None
            for _ in range(requests):
                generation = await context.generate(prompt, params=params)
                text = generation.choices[0].text
            return ProgramResult(text, 1.0, context.usage, requests, StopReason.CAP, (), context.program_id)

        return program

    async with Runtime(endpoint, window=load.concurrency) as runtime:
        handles = [
            runtime.submit(make(prompt), program_id=f"{tag}-{index}")
            for index, prompt in enumerate(load.prompts)
        ]
        for handle in handles:
            await handle
    return load.requests


async def _client_runs(
    base_url: str, model: str, loads: dict[bool, _Load], repeats: int, modes: tuple[str, ...]
) -> dict[str, list[tuple[float, float, int | None]]]:
    import openai

    from ..endpoints import Endpoint
    from ..replay._parts import REPLAY_CAPABILITIES

    timeout = 120.0
    concurrency = max(load.concurrency for load in loads.values())
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=timeout)
    endpoint = Endpoint(
        base_url, model=model, capabilities=REPLAY_CAPABILITIES, timeout=timeout,
        max_in_flight=max(64, concurrency),
    )  # fmt: skip
    out: dict[str, list[tuple[float, float, int | None]]] = {mode: [] for mode in modes}
    runs = 0

    async def one(mode: str, warmup: bool = False) -> tuple[float, float, int | None]:
        nonlocal runs
        runs += 1
        tag = f"{mode}-{runs}"
        stream = mode.endswith("_stream")
        load = loads[stream]
        if warmup:  # enough programs to open every connection of the window
            programs = max(1, min(len(load.prompts), -(-2 * load.concurrency // load.requests_per_program)))
            load = _Load(
                load.prompts[:programs], load.requests_per_program, load.concurrency, load.max_tokens
            )
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        chunks: int | None = None
        if mode.startswith("baseline"):
            chunks = await _baseline_run(client, model, load, stream, tag)
        else:
            await _runtime_run(endpoint, load, stream, tag)
        return time.process_time() - cpu0, time.perf_counter() - wall0, chunks

    try:
        for mode in modes:  # warm up: connections, imports, caches
            await one(mode, warmup=True)
        for rep in range(repeats):
            order = modes if rep % 2 == 0 else tuple(reversed(modes))
            for mode in order:
                out[mode].append(await one(mode))
    finally:
        await client.close()
        await endpoint.aclose()
    return out


def _synthetic_traces(path: Path, questions: int, tokens: int, seed: int) -> list[str]:
    """Word-salad questions whose samples all outlast ``tokens``; returns their prompts."""
    from ..traces import question_to_json
    from ._replay import synthetic_questions

    chosen = synthetic_questions(count=questions, samples=4, tokens=tokens, seed=seed)
    path.write_text("".join(json.dumps(question_to_json(q)) + "\n" for q in chosen), encoding="utf-8")
    return [f"Question: {q.question}\nAnswer:" for q in chosen]


def measure_client_overhead(
    *,
    requests: int = 1000,
    stream_requests: int = 128,
    requests_per_program: int = 4,
    concurrency: int = 32,
    max_tokens: int = 128,
    repeats: int = 5,
    flush_interval_s: float = 0.0,
    seed: int = 0,
    modes: tuple[str, ...] = MODES,
) -> dict[str, Any]:
    """Figure 1 (``docs/overhead-benchmark.md``): CPU microseconds per request of each mode, and the ratios.

    ``requests`` per timed non-streaming run, ``stream_requests`` per streaming run (a streamed
    response is one chunk per token, ``flush_interval_s=0``, so it costs the client far more).
    """
    counts = (requests, stream_requests, requests_per_program, concurrency, max_tokens, repeats)
    if min(counts) < 1:
        raise ValueError("request counts, concurrency, max_tokens and repeats must be >= 1")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    from ._replay import pinned_apart

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(prefix="dynasor-bench-overhead-") as tmp:
        traces = Path(tmp) / "traces.jsonl"
        # Samples of 1.8-2.2x max_tokens: every response stops at exactly max_tokens tokens.
        prompts = _synthetic_traces(traces, 16, max(2 * max_tokens, 16), seed)

        def load_of(total: int) -> _Load:
            programs = max(1, -(-total // requests_per_program))
            chosen = tuple(prompts[i % len(prompts)] for i in range(programs))
            return _Load(chosen, requests_per_program, concurrency, max_tokens)

        loads = {False: load_of(requests), True: load_of(stream_requests)}
        with (
            _replay_server(traces, flush_interval_s) as (base_url, model, server),
            pinned_apart(server.pid, cpus) as pinned,
        ):
            runs = asyncio.run(_client_runs(base_url, model, loads, repeats, modes))
    per_mode: dict[str, Any] = {}
    for mode, samples in runs.items():
        n = loads[mode.endswith("_stream")].requests
        cpu = [c / n * 1e6 for c, _, _ in samples]
        wall = [w for _, w, _ in samples]
        chunks = [k for _, _, k in samples if k is not None]
        per_mode[mode] = {
            "requests": n,
            "cpu_us_per_request": statistics.median(cpu),
            "cpu_us_per_request_runs": cpu,
            "wall_s_runs": wall,
            "requests_per_s": n / statistics.median(wall),
            "chunks_per_request": statistics.median(chunks) / n if chunks else None,
        }

    def ratio(runtime: str, baseline: str) -> float | None:
        if runtime not in per_mode or baseline not in per_mode:
            return None
        return float(per_mode[runtime]["cpu_us_per_request"] / per_mode[baseline]["cpu_us_per_request"])

    return {
        "ratio": ratio("runtime", "baseline"),
        "ratio_streaming": ratio("runtime_stream", "baseline_stream"),
        "modes": per_mode,
        "requests_per_run": loads[False].requests,
        "stream_requests_per_run": loads[True].requests,
        "requests_per_program": requests_per_program,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "server_flush_interval_s": flush_interval_s,
        "server_pinned_apart": pinned,
    }


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
    from ..replay._parts import REPLAY_CAPABILITIES
    from ..runtime import Runtime, RuntimeContext

    # Nothing is ever sent: the window stays full, so no waiting program reaches HTTP.
    endpoint = Endpoint("http://127.0.0.1:9/v1", model="none", capabilities=REPLAY_CAPABILITIES)
    held, release = asyncio.Event(), asyncio.Event()
    params = SamplingParams(max_tokens=256, temperature=_TEMPERATURE)

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


def add_overhead_parser(bench_sub: Any) -> argparse.ArgumentParser:
    """``bench overhead`` under the ``bench`` subcommand's subparsers."""
    parser: argparse.ArgumentParser = bench_sub.add_parser(
        "overhead",
        help="client CPU of the runtime vs a plain AsyncOpenAI loop, scheduler decision time, memory",
        description="See dynasor_client.benchmarks._overhead for what is measured and the JSON.",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument("--programs", type=int, default=10_000, help="programs queued / waiting (2 and 3)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per non-streaming timed run")
    parser.add_argument("--stream-requests", type=int, default=128, help="requests per streaming timed run")
    parser.add_argument("--requests-per-program", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (the window)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per response")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each mode (interleaved)")
    parser.add_argument("--decisions", type=int, default=20_000, help="scheduling decisions timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, one repeat")
    return parser


def overhead_command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON. Failures raise ValueError."""
    counts = ("programs", "requests", "stream_requests", "requests_per_program", "concurrency", "max_tokens",
              "repeats", "decisions")  # fmt: skip
    for name in counts:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        result = run_overhead_benchmark(**{name: getattr(args, name) for name in counts},
                                        seed=args.seed, quick=args.quick)  # fmt: skip
    except RuntimeError as exc:  # the replay server did not start
        raise ValueError(str(exc)) from exc
    return finish_command(result, overhead_table(result), args.json_out)
