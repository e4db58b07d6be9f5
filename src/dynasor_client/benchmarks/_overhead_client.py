"""Figure 1 of the overhead benchmark: the client's CPU per request through the runtime against a
plain ``openai.AsyncOpenAI`` loop, both against one replay server in a child process
(``docs/overhead-benchmark.md``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MODES", "TEMPERATURE", "measure_client_overhead"]

_PROFILE = "llama3-8b-h100-80gb"
TEMPERATURE = 0.7
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
                        temperature=TEMPERATURE, stream=True, stream_options={"include_usage": True},
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
                        temperature=TEMPERATURE, extra_headers=headers,
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
    params = SamplingParams(max_tokens=load.max_tokens, temperature=TEMPERATURE)
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
    from ..replay import REPLAY_CAPABILITIES

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
