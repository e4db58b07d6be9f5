"""``dynasor-client bench proxy``: what the proxy adds to a pass-through stream, against going direct.

Three processes on loopback: the replay server (``time_scale = 0``: the modelled GPU is infinitely
fast, so only CPU limits it; its profile widened so every stream runs at once), the proxy
(``dynasor-client proxy --upstream <replay>``, every request a plain pass-through stream), and the
load generator in this process. The load generator is a closed loop of ``N`` keep-alive HTTP/1.1
connections on raw sockets (the same code for both targets, so its cost is the same): each sends a
streaming ``/v1/completions`` request, reads the stream to its end, and sends the next. Per ``N``,
``repeats`` pairs of windows, one against the replay server directly then one through the proxy
(interleaved, so that a slow spell of a shared machine hits both), pooled; the figures:

- ``requests_per_s``: requests that finished in the windows, per wall second (and of each window:
  ``requests_per_s_each``);
- ``latency_ms`` p50/p99 (request sent to the stream's last byte) and ``ttfb_ms`` p50/p99 (to the
  response head), of the requests that finished in the window;
- CPU milliseconds per request of the client (this process), the proxy and the replay server
  (``/proc/<pid>/stat``; None where there is no ``/proc``);
- for the proxy: ``throughput_ratio`` (proxy / direct requests/s) and ``added_latency_ms`` p50/p99
  (proxy minus direct).

Then ``aborts`` requests are opened through the proxy and dropped after their first bytes
(``abort_concurrency`` at a time); the proxy's RSS is read before and after (``rss_mib``), and its
``/dynasor/stats`` should show no run left (``running_after``, polled for up to 10 s: ``drain_s``).

Goals (``goals`` in the JSON, each with whether it was met): pass-through throughput at 200 streams
at least 80% of direct, and at most 2 ms added p50 latency at ``N = 1``. All three processes share
the machine's cores (no pinning): compare the ratios of one run, not figures across machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..replay import get_profile
from ..traces import question_to_json
from ._common import format_table, run_metadata
from ._replay import _wide, child_server, free_port, synthetic_questions

__all__ = ["proxy_table", "run_proxy_benchmark"]

#: Goals of issue 17 (part 8).
GOAL_THROUGHPUT_RATIO = 0.8
GOAL_THROUGHPUT_STREAMS = 200
GOAL_ADDED_P50_MS = 2.0

_PROFILE = "llama3-8b-h100-80gb"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (None without ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------------------- the load generator


class _StreamError(Exception):
    """A response that was not a complete 200 stream."""


@dataclass
class _Window:
    """What the closed loop records: (start, first byte, end) of each finished request."""

    done: list[tuple[float, float, float]] = field(default_factory=list)
    failed: int = 0


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise _StreamError("connection closed before the response")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """The whole body (chunked or with a length); only its tail is kept (the ``[DONE]`` check)."""
    if "chunked" in headers.get("transfer-encoding", ""):
        tail = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return tail
            tail = (tail + chunk[:-2])[-64:]
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read()


def _request(port: int, prompt: str, max_tokens: int) -> bytes:
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _slot(
    port: int, prompts: Sequence[str], max_tokens: int, window: _Window, stop: asyncio.Event, seed: int
) -> None:
    """One closed-loop stream slot on a keep-alive connection (reopened when it closes)."""
    rng = random.Random(seed)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while not stop.is_set():
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
                start = time.perf_counter()
                writer.write(_request(port, rng.choice(prompts), max_tokens))
                status, headers = await _read_head(reader)
                first = time.perf_counter()
                tail = await _read_body(reader, headers)
                end = time.perf_counter()
                if status != 200 or b"[DONE]" not in tail:
                    raise _StreamError(f"status {status}, body ending {tail[-60:]!r}")
                window.done.append((start, first, end))
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = reader = None
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, _StreamError):
                window.failed += 1
                if writer is not None:
                    writer.close()
                writer = reader = None
                await asyncio.sleep(0.05)
    finally:
        if writer is not None:
            writer.close()


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class _Sample:
    """What one window measured."""

    wall_s: float
    latency_ms: list[float]
    ttfb_ms: list[float]
    failed: int
    cpu_s: dict[str, float | None]


async def _measure(
    port: int,
    prompts: Sequence[str],
    streams: int,
    max_tokens: int,
    warmup_s: float,
    window_s: float,
    pids: dict[str, int],
) -> _Sample:
    """One closed-loop window of ``streams`` slots against ``port``."""
    window = _Window()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_slot(port, prompts, max_tokens, window, stop, seed=i)) for i in range(streams)
    ]
    await asyncio.sleep(warmup_s)
    cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
    client0, wall0, failed0 = time.process_time(), time.perf_counter(), window.failed
    await asyncio.sleep(window_s)
    wall1, client1 = time.perf_counter(), time.process_time()
    cpu1 = {name: _cpu_s(pid) for name, pid in pids.items()}
    failed = window.failed - failed0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    inside = [d for d in window.done if wall0 <= d[2] <= wall1]

    def spent(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None else after - before

    cpu = {"client": client1 - client0, **{name: spent(cpu0[name], cpu1[name]) for name in pids}}
    return _Sample(
        wall_s=wall1 - wall0,
        latency_ms=[(end - begin) * 1000 for begin, _, end in inside],
        ttfb_ms=[(first - begin) * 1000 for begin, first, _ in inside],
        failed=failed,
        cpu_s=cpu,
    )


def _summary(streams: int, samples: Sequence[_Sample]) -> dict[str, Any]:
    """The figures of ``samples`` (the repeats of one target at one N) pooled."""
    wall = sum(s.wall_s for s in samples)
    latency = [v for s in samples for v in s.latency_ms]
    ttfb = [v for s in samples for v in s.ttfb_ms]
    count = len(latency)
    cpu: dict[str, float | None] = {}
    for name in samples[0].cpu_s:
        spent = [s.cpu_s[name] for s in samples]
        total = None if any(v is None for v in spent) else sum(v for v in spent if v is not None)
        cpu[name] = None if total is None or not count else round(total * 1000 / count, 3)
    return {
        "streams": streams,
        "window_s": round(wall, 3),
        "requests": count,
        "failed": sum(s.failed for s in samples),
        "requests_per_s": round(count / wall, 1),
        "requests_per_s_each": [round(len(s.latency_ms) / s.wall_s, 1) for s in samples],
        "latency_ms": {
            "p50": _round(_pct(latency, 0.5)),
            "p99": _round(_pct(latency, 0.99)),
            "mean": _round(statistics.fmean(latency) if latency else None),
        },
        "ttfb_ms": {"p50": _round(_pct(ttfb, 0.5)), "p99": _round(_pct(ttfb, 0.99))},
        "cpu_ms_per_request": cpu,
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


async def _aborts(port: int, prompts: Sequence[str], count: int, concurrency: int, max_tokens: int) -> int:
    """``count`` streaming requests dropped after their first body bytes; how many got that far."""
    slots = asyncio.Semaphore(concurrency)
    reached = 0

    async def one(i: int) -> None:
        nonlocal reached
        async with slots:
            writer = None
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(_request(port, prompts[i % len(prompts)], max_tokens))
                status, _ = await _read_head(reader)
                if status == 200 and await reader.read(256):
                    reached += 1
            except (OSError, ValueError, IndexError, _StreamError):
                pass
            finally:
                if writer is not None:
                    transport = writer.transport
                    with contextlib.suppress(AttributeError):
                        transport.abort()  # an RST, as a killed client

    await asyncio.gather(*(one(i) for i in range(count)))
    return reached


# ---------------------------------------------------------------------------- the processes


@contextlib.contextmanager
def _servers(
    tmp: Path, traces: Path, streams: int, tokens: int, max_in_flight: int, flush_interval_s: float
) -> Iterator[tuple[int, int, dict[str, int]]]:
    """The replay server and the proxy in front of it: yields (replay port, proxy port, pids)."""
    profile = _wide(get_profile(_PROFILE), streams, tokens)
    profile_path = tmp / "profile.json"
    profile.save(profile_path)
    replay_port, proxy_port = free_port(), free_port()
    replay_argv = [
        "-m", "dynasor_client", "serve-replay", "--traces", str(traces), "--port", str(replay_port),
        "--profile", str(profile_path), "--time-scale", "0", "--flush-interval", repr(flush_interval_s),
    ]  # fmt: skip
    proxy_argv = [
        "-m", "dynasor_client", "proxy", "--upstream", f"http://127.0.0.1:{replay_port}/v1",
        "--port", str(proxy_port), "--capabilities", "replay", "--max-in-flight", str(max_in_flight),
    ]  # fmt: skip

    def health(port: int) -> Any:
        return _get_json(f"http://127.0.0.1:{port}/health")

    with (
        child_server(replay_argv, tmp / "replay.log", lambda: health(replay_port)) as (replay, _),
        child_server(proxy_argv, tmp / "proxy.log", lambda: health(proxy_port)) as (proxy, _),
    ):
        yield replay_port, proxy_port, {"proxy": proxy.pid, "replay": replay.pid}


def run_proxy_benchmark(
    *,
    streams: Sequence[int] = (1, 50, 200, 500),
    window_s: float = 3.0,
    warmup_s: float = 1.0,
    repeats: int = 2,
    max_tokens: int = 32,
    aborts: int = 1000,
    abort_concurrency: int = 50,
    max_in_flight: int | None = None,
    flush_interval_s: float = 0.0,
    quick: bool = False,
) -> dict[str, Any]:
    """Run the bench (module docs) and return its figures (``quick``: N = 1 and 8, short windows,
    50 aborts: a smoke run of seconds)."""
    if quick:
        streams, window_s, warmup_s, repeats, aborts, abort_concurrency = (1, 8), 0.5, 0.2, 1, 50, 10
    if not streams or min(streams) < 1 or min(max_tokens, repeats) < 1 or window_s <= 0 or warmup_s < 0:
        raise ValueError("streams, max_tokens and repeats must be >= 1, window_s > 0, warmup_s >= 0")
    if aborts < 0 or abort_concurrency < 1:
        raise ValueError("aborts must be >= 0 and abort_concurrency >= 1")
    in_flight = max_in_flight if max_in_flight is not None else max(max(streams), abort_concurrency)
    abort_tokens = 4096
    started = time.perf_counter()
    questions = synthetic_questions(count=16, samples=4, tokens=2 * max(max_tokens, abort_tokens), seed=0)
    prompts = [f"Question: {q.question}\nAnswer:" for q in questions]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dynasor-bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        traces = tmp / "traces.jsonl"
        traces.write_text(
            "".join(json.dumps(question_to_json(q)) + "\n" for q in questions), encoding="utf-8"
        )
        most = max(*streams, abort_concurrency)
        with _servers(tmp, traces, most, 2 * abort_tokens, in_flight, flush_interval_s) as (
            replay_port,
            proxy_port,
            pids,
        ):
            targets = {"direct": (replay_port, {"replay": pids["replay"]}), "proxy": (proxy_port, pids)}
            for n in streams:
                measured: dict[str, list[_Sample]] = {"direct": [], "proxy": []}
                for _ in range(repeats):  # interleaved: a slow spell of the machine hits both
                    for target, (port, watched) in targets.items():
                        run = _measure(port, prompts, n, max_tokens, warmup_s, window_s, watched)
                        measured[target].append(asyncio.run(run))
                direct, proxied = (_summary(n, measured[t]) for t in ("direct", "proxy"))
                rows.append({"streams": n, "direct": direct, "proxy": proxied, **_compare(direct, proxied)})
            time.sleep(0.5)
            rss_before = _rss_mib(pids["proxy"])
            reached = asyncio.run(_aborts(proxy_port, prompts, aborts, abort_concurrency, abort_tokens))
            drained = time.perf_counter()
            while True:  # the proxy notices the disconnects and closes its upstream streams
                stats = _get_json(f"http://127.0.0.1:{proxy_port}/dynasor/stats")
                if not stats.get("running") or time.perf_counter() - drained > 10:
                    break
                time.sleep(0.1)
            drained = time.perf_counter() - drained
            abort_figures = {
                "requests": aborts,
                "concurrency": abort_concurrency,
                "max_tokens": abort_tokens,
                "reached_stream": reached,
                "rss_mib_before": rss_before,
                "rss_mib_after": _rss_mib(pids["proxy"]),
                "running_after": stats.get("running"),
                "drain_s": round(drained, 2),
            }
    result: dict[str, Any] = {
        "benchmark": "proxy",
        **run_metadata(("httpx", "httpcore", "uvicorn", "starlette", "fastapi", "httpx-sse")),
        "settings": {
            "streams": list(streams),
            "window_s": window_s,
            "warmup_s": warmup_s,
            "repeats": repeats,
            "max_tokens": max_tokens,
            "flush_interval_s": flush_interval_s,
            "events_per_request": max_tokens if flush_interval_s == 0 else None,
            "proxy_max_in_flight": in_flight,
            "replay_profile": f"{_PROFILE} widened to {most} streams",
            "quick": quick,
        },
        "runs": rows,
        "aborts": abort_figures,
        "goals": _goals(rows),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    return result


def _compare(direct: dict[str, Any], proxied: dict[str, Any]) -> dict[str, Any]:
    def minus(key: str, q: str) -> float | None:
        a, b = proxied[key][q], direct[key][q]
        return None if a is None or b is None else round(a - b, 3)

    ratio = proxied["requests_per_s"] / direct["requests_per_s"] if direct["requests_per_s"] else None
    return {
        "throughput_ratio": _round(ratio),
        "added_latency_ms": {"p50": minus("latency_ms", "p50"), "p99": minus("latency_ms", "p99")},
        "added_ttfb_ms_p50": minus("ttfb_ms", "p50"),
    }


def _goals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_n = {row["streams"]: row for row in rows}
    goals: dict[str, Any] = {}
    at = by_n.get(GOAL_THROUGHPUT_STREAMS)
    ratio = at["throughput_ratio"] if at is not None else None
    goals["throughput_ratio_at_200"] = {
        "goal": f">= {GOAL_THROUGHPUT_RATIO}",
        "value": ratio,
        "met": None if ratio is None else ratio >= GOAL_THROUGHPUT_RATIO,
    }
    one = by_n.get(1)
    added = one["added_latency_ms"]["p50"] if one is not None else None
    goals["added_p50_ms_at_1"] = {
        "goal": f"<= {GOAL_ADDED_P50_MS}",
        "value": added,
        "met": None if added is None else added <= GOAL_ADDED_P50_MS,
    }
    return goals


def proxy_table(result: dict[str, Any]) -> str:
    """The figures as a plain-text table, the abort figures and the goals."""

    def num(value: Any, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    rows = []
    for run in result["runs"]:
        for mode in ("direct", "proxy"):
            r = run[mode]
            cpu = r["cpu_ms_per_request"]
            rows.append([
                run["streams"] if mode == "direct" else "",
                mode,
                num(r["requests_per_s"]),
                num(r["latency_ms"]["p50"], ".2f"),
                num(r["latency_ms"]["p99"], ".2f"),
                num(cpu.get("client"), ".3f"),
                num(cpu.get("proxy"), ".3f"),
                num(cpu.get("replay"), ".3f"),
                r["failed"],
                num(run["throughput_ratio"], ".2f") if mode == "proxy" else "",
                num(run["added_latency_ms"]["p50"], ".2f") if mode == "proxy" else "",
                num(run["added_latency_ms"]["p99"], ".2f") if mode == "proxy" else "",
            ])  # fmt: skip
    headers = ["N", "target", "req/s", "p50 ms", "p99 ms", "client CPU ms/req", "proxy CPU ms/req",
               "replay CPU ms/req", "failed", "ratio", "+p50 ms", "+p99 ms"]  # fmt: skip
    a = result["aborts"]
    lines = [
        format_table(headers, rows, left=2),
        "",
        f"{a['requests']} aborted streams ({a['reached_stream']} dropped mid-stream): proxy RSS "
        f"{num(a['rss_mib_before'])} -> {num(a['rss_mib_after'])} MiB, runs left {a['running_after']} "
        f"(after {a['drain_s']} s)",
    ]
    for name, goal in result["goals"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        lines.append(f"goal {name}: {goal['goal']}, measured {num(goal['value'], '.2f')} ({met})")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(proxy_table(run_proxy_benchmark(quick="--quick" in sys.argv)))
