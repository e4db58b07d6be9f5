"""``dynasor-client bench replay``: how many concurrent streams the replay server sustains on one core.

The server runs in a child process (pinned to one CPU core where the OS allows), the load generator
in this one (on the other cores): a closed loop of ``K`` streaming ``/v1/completions`` requests on raw
sockets, each replaced by a new one the moment it ends, so ``K`` streams are always open. Two
measurements per ``K``:

- **ceiling** (``time_scale = 0``): the modelled GPU is infinitely fast, so the server's Python
  process is the only limit. Figures: tokens per second delivered (server-side count), SSE events
  and tokens per event, engine iterations per second, streams open.
- **real time** (``time_scale = 1``) with a fast GPU profile (Llama-3-8B on an H100 by default, its
  batch and KV cache enlarged to hold all ``K`` streams): ``keep_up``, the modelled seconds that
  passed per wall second (1.0: every modelled latency is replayed in real time), the tokens per
  second delivered and the modelled GPU's own rate, and the flush interval the server settled on
  (it widens its streams' flush interval while it lags, see
  :class:`~dynasor_client.replay.ReplayServer`).

``max_streams_real_time`` is the largest ``K`` kept in real time (``keep_up >= 0.95`` with every
stream open). Questions are synthetic (32 questions x 4 samples of about 8,000 tokens, so that
streams outlive the measurement) unless ``traces`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..replay import GPUProfile, get_profile
from ..traces import TraceQuestion, TraceSample, load_traces, question_to_json

__all__ = ["bench_replay", "bench_summary"]

T = TypeVar("T")

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "which",
    "we",
    "have",
    "not",
    "number",
    "total",
    "each",
    "more",
    "than",
    "so",
    "then",
    "let",
    "us",
    "find",
    "answer",
    "sum",
    "product",
    "equals",
    "twice",
    "half",
    "remaining",
]


def synthetic_questions(
    count: int = 32, samples: int = 4, tokens: int = 8000, seed: int = 0
) -> list[TraceQuestion]:
    """Questions with word-salad samples of ``tokens`` tokens (+-10%; one word per token).

    Samples are long so that streams outlive the measurement window: the bench measures streams,
    not the cost of starting requests.
    """
    rng = random.Random(seed)
    out = []
    for i in range(count):
        question = f"Bench question {i}: " + " ".join(rng.choice(_WORDS) for _ in range(30)) + "?"
        recorded = []
        for _ in range(samples):
            n = max(8, int(tokens * rng.uniform(0.9, 1.1)))
            text = " ".join(rng.choice(_WORDS) for _ in range(n - 1)) + f" \\boxed{{{rng.randint(1, 9)}}}"
            recorded.append(TraceSample(answer=None, num_tokens=n, text=text, finish_reason="stop"))
        out.append(TraceQuestion(id=f"bench-{i}", question=question, gold="0", samples=tuple(recorded)))
    return out


@dataclass
class _Load:
    """Counters of the load generator."""

    events: int = 0
    bytes: int = 0
    finished: int = 0
    completion_tokens: int = 0
    failed: int = 0
    open: int = 0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


async def _stream_forever(
    port: int, prompts: list[str], max_tokens: int, load: _Load, stop: asyncio.Event, rng: random.Random
) -> None:
    """One closed-loop stream slot: request, read to the end, repeat."""
    while not stop.is_set():
        body = json.dumps(
            {
                "model": "bench",
                "prompt": rng.choice(prompts),
                "max_tokens": max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            writer.write(head + body)
            load.open += 1
            tail = b""
            try:
                while True:
                    data = await reader.read(1 << 16)
                    if not data:
                        break
                    load.bytes += len(data)
                    load.events += (tail[-6:] + data).count(b"data: ")
                    tail = (tail + data)[-4096:]
            finally:
                load.open -= 1
            at = tail.rfind(b'"completion_tokens":')
            if b"[DONE]" in tail and at >= 0:
                digits = tail[at + 20 : at + 32].split(b",")[0].split(b"}")[0]
                load.completion_tokens += int(digits)
                load.finished += 1
            else:
                load.failed += 1
        except (OSError, ValueError):
            load.failed += 1
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a child server to listen on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(pid: int, cores: set[int]) -> bool:
    if not hasattr(os, "sched_setaffinity") or not cores:
        return False
    try:
        os.sched_setaffinity(pid, cores)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def pinned_apart(pid: int, cpus: Sequence[int]) -> Iterator[bool]:
    """Pin process ``pid`` (a child server) to the first of ``cpus`` and this process to the others,
    when there are two or more and the OS allows; yields whether it did. On exit this process gets
    every one of ``cpus`` back (it may go on with other work)."""
    pinned = False
    try:
        if len(cpus) >= 2:
            pinned = _pin(pid, {cpus[0]}) and _pin(0, set(cpus[1:]))
        yield pinned
    finally:
        if len(cpus) >= 2:
            _pin(0, set(cpus))


@contextlib.contextmanager
def child_server(
    argv: Sequence[str], log: Path, ready: Callable[[], T]
) -> Iterator[tuple[subprocess.Popen[bytes], T]]:
    """``python argv...`` in a child process that imports this source tree, its output to ``log``
    (a file, not a pipe nobody reads: it would fill up). ``ready()`` is called until it returns
    (an OSError: not yet), for up to 60 s; yields (the process, what ``ready`` returned), and
    terminates the process on exit. RuntimeError when it exits or does not answer in time."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, *argv], env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the replay server exited at start: {log.read_text(errors='replace')[-2000:]}"
                )
            try:
                answer = ready()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the replay server did not answer within 60 s") from None
                time.sleep(0.1)
        yield process, answer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _measure(
    port: int, prompts: list[str], streams: int, max_tokens: int, warmup_s: float, window_s: float
) -> dict[str, Any]:
    load = _Load()
    stop = asyncio.Event()
    rng = random.Random(1)
    tasks = []
    for _ in range(streams):
        tasks.append(asyncio.create_task(_stream_forever(port, prompts, max_tokens, load, stop, rng)))
        if len(tasks) % 100 == 0:
            await asyncio.sleep(0.05)  # ramp up: a burst of thousands of connections is another test
    await asyncio.sleep(warmup_s)
    base = f"http://127.0.0.1:{port}/metrics?format=json"
    before = await asyncio.to_thread(_get_json, base)
    load0 = replace(load)
    wall0 = time.perf_counter()
    await asyncio.sleep(window_s)
    after = await asyncio.to_thread(_get_json, base)
    wall = time.perf_counter() - wall0
    load1 = replace(load)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tokens = after["tokens_generated"] - before["tokens_generated"]
    modelled = after["clock_s"] - before["clock_s"]
    events = load1.events - load0.events
    return {
        "streams": streams,
        "window_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "events_per_s": round(events / wall, 1),
        "tokens_per_event": round(tokens / events, 2) if events else None,
        "iterations_per_s": round((after["iterations"] - before["iterations"]) / wall, 1),
        "modelled_s_per_wall_s": round(modelled / wall, 4),
        "modelled_gpu_tokens_per_s": round(tokens / modelled, 1) if modelled > 0 else None,
        "streams_open_server": after["streams_open"],
        "streams_open_client": load1.open,
        "running": after["running"],
        "waiting": after["waiting"],
        "requests_finished": load1.finished - load0.finished,
        "requests_failed": load1.failed - load0.failed,
        "mb_per_s": round((load1.bytes - load0.bytes) / wall / 1e6, 2),
        "flush_interval_s_at_end": after.get("flush_interval_s"),
    }


def _wide(profile: GPUProfile, streams: int, tokens: int) -> GPUProfile:
    """``profile`` with a batch and KV cache big enough for every stream to run at once."""
    need = streams * (tokens * 2 + 200)
    return replace(
        profile,
        name=f"{profile.name}-bench",
        max_batch=max(profile.max_batch, streams),
        kv_capacity_tokens=max(profile.kv_capacity_tokens, need),
    )


def bench_replay(
    *,
    streams: tuple[int, ...] = (500, 1000, 2000),
    traces: str | Path | None = None,
    profile: str | GPUProfile = "llama3-8b-h100-80gb",
    max_tokens: int = 8192,
    warmup_s: float = 3.0,
    window_s: float = 6.0,
    flush_interval_s: float = 0.05,
    realtime: bool = True,
) -> dict[str, Any]:
    """Run the bench (see the module docs) and return its figures."""
    gpu = get_profile(profile)
    cpus = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    questions = load_traces(traces) if traces is not None else synthetic_questions()
    prompts = [f"Question: {q.question}\nAnswer:" for q in questions if q.samples and q.question]
    if not prompts:
        raise ValueError("the traces have no question with samples to replay")
    figures: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": len(cpus),
        "pinned": False,
        "traces": str(traces) if traces is not None else "synthetic (32 questions x 4 samples, ~8000 tokens)",
        "max_tokens": max_tokens,
        "flush_interval_s": flush_interval_s,
        "profile": gpu.name,
        "ceiling": [],
        "realtime": [],
    }
    with tempfile.TemporaryDirectory(prefix="dynasor-bench-replay-") as tmp:
        traces_path = Path(tmp) / "traces.jsonl"
        if traces is not None:
            traces_path = Path(traces)
        else:
            traces_path.write_text(
                "".join(json.dumps(question_to_json(q)) + "\n" for q in questions), encoding="utf-8"
            )
        runs: list[tuple[str, float]] = [("ceiling", 0.0)] + ([("realtime", 1.0)] if realtime else [])
        for kind, scale in runs:
            for k in streams:
                wide = _wide(gpu, k, min(max_tokens, 9000))
                profile_path = Path(tmp) / f"profile-{kind}-{k}.json"
                wide.save(profile_path)
                port = free_port()
                code = (
                    "import sys; from dynasor_client.replay import serve_replay; "
                    f"serve_replay({str(traces_path)!r}, port={port}, profile={str(profile_path)!r}, "
                    f"time_scale={scale!r}, flush_interval_s={flush_interval_s!r})"
                )
                health = partial(_get_json, f"http://127.0.0.1:{port}/health")
                log = Path(tmp) / f"server-{port}.log"
                with (
                    child_server(["-c", code], log, health) as (server, _),
                    pinned_apart(server.pid, cpus) as pinned,
                ):
                    figures["pinned"] = pinned
                    row = asyncio.run(_measure(port, prompts, k, max_tokens, warmup_s, window_s))
                    if kind == "realtime":
                        row["keep_up"] = row.pop("modelled_s_per_wall_s")
                    figures[kind].append(row)
    ceiling = figures["ceiling"]
    if ceiling:
        figures["ceiling_tokens_per_s"] = max(r["tokens_per_s"] for r in ceiling)
    if figures["realtime"]:
        figures["max_streams_real_time"] = max(
            (
                r["streams"]
                for r in figures["realtime"]
                if r["keep_up"] >= 0.95 and r["streams_open_server"] >= r["streams"]
            ),
            default=0,
        )
    return figures


def bench_summary(figures: dict[str, Any]) -> str:
    """Human-readable lines of :func:`bench_replay`'s figures."""
    lines = [
        f"replay server on one core (python {figures['python']}, {figures['cpus']} CPUs, "
        f"pinned: {figures['pinned']}; flush interval {figures['flush_interval_s']} s)",
        "ceiling (time_scale 0: the modelled GPU is infinitely fast)",
    ]
    for r in figures["ceiling"]:
        lines.append(
            f"  {r['streams']:>5} streams: {r['tokens_per_s']:>9.0f} tokens/s, "
            f"{r['events_per_s']:>8.0f} events/s "
            f"({r['tokens_per_event']} tokens/event), {r['iterations_per_s']:.0f} iterations/s, "
            f"{r['streams_open_server']} open, {r['requests_failed']} failed"
        )
    if figures["realtime"]:
        lines.append(f"real time (time_scale 1, profile {figures['profile']} widened to hold every stream)")
    for r in figures["realtime"]:
        lines.append(
            f"  {r['streams']:>5} streams: keep_up {r['keep_up']:.3f} (modelled s per wall s), "
            f"{r['tokens_per_s']:>9.0f} tokens/s (the modelled GPU's own rate: "
            f"{r['modelled_gpu_tokens_per_s']:.0f}/modelled s), "
            f"{r['tokens_per_event']} tokens/event "
            f"(flush interval {r['flush_interval_s_at_end']:.3f} s), "
            f"{r['streams_open_server']} open, {r['requests_failed']} failed"
        )
    if "max_streams_real_time" in figures:
        lines.append(f"largest number of streams kept in real time: {figures['max_streams_real_time']}")
    return "\n".join(lines)
