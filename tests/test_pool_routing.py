"""EndpointPool routing in front of two replay servers: programs spread by requests in flight, each
program's rounds on one replica (its prefix cached there), the chosen replica in the runtime's
events, and a replica killed mid-run (a real process, SIGKILL) then restarted: its programs move
to the other replica, and it gets work again once its health probe passes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from dynasor_client import Endpoint, Runtime
from dynasor_client.algorithms import self_consistency
from dynasor_client.endpoints import EndpointPool, HealthCheck, RetryPolicy
from dynasor_client.program import Program, as_program
from dynasor_client.replay import REPLAY_CAPABILITIES, ReplayServer
from dynasor_client.runtime import Event
from dynasor_client.traces import TraceQuestion
from tests.support.replay import TRACES, traces_or_skip

TRACE_FILE = "svamp-codex-sc30.jsonl"
FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.02, max_backoff_s=0.1, jitter_s=0.01, max_total_s=5)


def sc(question: TraceQuestion) -> Program:
    return as_program(self_consistency, question.question, n=30, rule="paper")


def replica(url: str, name: str) -> Endpoint:
    return Endpoint(url, capabilities=REPLAY_CAPABILITIES, name=name, retry=FAST, timeout=30)


def of_kind(events: Sequence[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


async def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Re-check ``check`` every 10 ms until it holds (an observable event, never a guessed delay)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.01)


async def metrics(root_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return dict((await client.get(f"{root_url}/metrics", params={"format": "json"})).json())


async def test_programs_spread_and_keep_their_replica() -> None:
    questions = traces_or_skip(TRACE_FILE)[:12]
    async with (
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=0.0) as a,
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=0.0) as b,
        EndpointPool([replica(a.base_url, "a"), replica(b.base_url, "b")]) as pool,
        Runtime(pool) as runtime,
    ):
        batch = await runtime.run_batch([sc(q) for q in questions], progress=False)
        served = [await metrics(s.root_url) for s in (a, b)]
    assert batch.finished == 12 and not batch.errors
    results = [r for r in batch.results if r is not None]
    events = list(runtime.events)
    routed = of_kind(events, "routed")
    # The chosen replica is in the events: one placement per program, none moved; least
    # outstanding (ties: fewer programs pinned) spreads them evenly.
    assert len(routed) == 12 and {e.program_id for e in routed} == {r.program_id for r in results}
    assert all(e.data["previous"] is None for e in routed)
    assert collections.Counter(e.data["replica"] for e in routed) == {"a": 6, "b": 6}
    # Every request of a program went to its replica: each server saw only its own programs...
    assert [m["programs"] for m in served] == [6, 6]
    placed = {e.program_id: e.data["replica"] for e in routed}
    for result in results:
        assert result.details["replicas"] == [placed[result.program_id]]
    # ...and a program's later rounds found its prompt in that server's prefix cache.
    several_rounds = sum(1 for r in results if r.steps > 1)
    assert several_rounds > 0
    assert all(m["cached_prompt_tokens"] > 0 for m in served)
    assert runtime.metrics.tokens["cached_prompt"] > 0  # usage.prompt_tokens_details.cached_tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ReplayProcess:
    """``dynasor-client serve-replay`` in a child process, to be killed as a crashed server is."""

    def __init__(self, traces: Path, port: int) -> None:
        self.traces, self.port = traces, port
        self.root_url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dynasor_client", "serve-replay", "--traces", str(self.traces),
            "--port", str(self.port), "--time-scale", "0.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        output: list[bytes] = []
        async with asyncio.timeout(60):
            while b"Replaying" not in (line := await proc.stdout.readline()):  # printed once serving
                assert line, f"the replay server exited: {b''.join(output).decode()[-2000:]}"
                output.append(line)
        self._drain = asyncio.create_task(self._read_rest(proc))

    @staticmethod
    async def _read_rest(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._drain is not None:
            await self._drain


@contextlib.asynccontextmanager
async def replay_processes(count: int) -> AsyncIterator[list[ReplayProcess]]:
    traces_or_skip(TRACE_FILE)
    servers = [ReplayProcess(TRACES / TRACE_FILE, free_port()) for _ in range(count)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    finally:
        for server in servers:
            await server.kill()


async def test_killed_replica_fails_over_and_comes_back_after_restart() -> None:
    questions = traces_or_skip(TRACE_FILE)[:20]
    health = HealthCheck(backoff_s=0.1, max_backoff_s=0.5, timeout_s=2)
    async with replay_processes(2) as (a, b):
        endpoints = [replica(f"{a.root_url}/v1", "a"), replica(f"{b.root_url}/v1", "b")]
        async with (
            EndpointPool(endpoints, health=health, failure_threshold=1) as pool,
            Runtime(pool) as runtime,
        ):
            events = runtime.events
            wave1 = [runtime.submit(sc(q)) for q in questions[:10]]
            placed = {e.program_id: e.data["replica"] for e in of_kind(list(events), "routed")}
            assert collections.Counter(placed.values()) == {"a": 5, "b": 5}  # spread at submission
            on_a = {pid for pid, name in placed.items() if name == "a"}

            # Kill a once every one of its programs has finished a round: they are mid-run.
            def rounds_done_on_a() -> bool:
                done = {e.program_id for e in events if e.kind == "request" and e.program_id in on_a}
                return done == on_a

            await until(rounds_done_on_a, "the programs on replica a finished their first round")
            await a.kill()
            await until(lambda: bool(of_kind(list(events), "replica_down")), "replica a taken out")
            assert of_kind(list(events), "replica_down")[0].data["replica"] == "a"

            await a.start()  # the same port: the pool's probes find it again
            wave2 = [runtime.submit(sc(q)) for q in questions[10:16]]  # traffic that triggers probes
            await until(lambda: bool(of_kind(list(events), "replica_up")), "replica a back", within=60)
            back = of_kind(list(events), "replica_up")[0]
            assert back.data == {"replica": "a", "via": "probe"}
            # Back and idle: the next program goes to it (least outstanding).
            wave3 = [runtime.submit(sc(q)) for q in questions[16:18]]
            results = await asyncio.gather(*wave1, *wave2, *wave3)
            served_a = await metrics(a.root_url)

    assert all(r.answer is not None for r in results)  # no program lost to the crash
    routed = of_kind(list(events), "routed")
    moved = [e for e in routed if e.data["previous"] is not None]
    # The programs on a that still had rounds to go moved to b, once each; nothing else moved.
    assert moved and all(e.data == {"replica": "b", "previous": "a"} for e in moved)
    assert {e.program_id for e in moved} <= on_a
    by_id = {r.program_id: r for r in results}
    for event in moved:
        assert by_id[event.program_id].details["replicas"] == ["a", "b"]
    unmoved = [r for r in results if r.program_id not in {e.program_id for e in moved}]
    assert all(len(r.details["replicas"]) == 1 for r in unmoved)  # each on one replica throughout
    first_after = next(e for e in routed if e.program_id == wave3[0].program_id)
    assert first_after.data["replica"] == "a"
    assert by_id[wave3[0].program_id].details["replicas"] == ["a"]
    assert served_a["requests_total"] > 0 and served_a["programs"] >= 1  # the restarted process served
