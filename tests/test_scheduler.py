"""Scheduling policies and the client-side scheduler: order, gangs, the window, aging, deadlines,
budget refusals; priority hints on the wire (the loopback fault server records each request)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dynasor_client import BudgetExhausted, Capabilities, Endpoint, SamplingParams
from dynasor_client.budget import Account
from dynasor_client.program import ProgramContext, ProgramResult, StopReason
from dynasor_client.runtime import (
    ProgramRecord,
    Runtime,
    Scheduler,
    SchedulingPolicy,
    aging,
    demote_infeasible,
    fcfs,
    least_laxity,
    shortest_remaining_work,
)

from .support.faulty_server import FaultyServer
from .support.replay import TRACES


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def program(
    name: str, *, arrival: float = 0.0, expected: float = 1000.0, deadline: float | None = None
) -> ProgramRecord:
    return ProgramRecord(name, name, arrival, deadline, Account(None), expected, 0.01)


def scheduler(
    policy: SchedulingPolicy, window: int | None = 1, gang: bool = True, refuse: set[str] | None = None
) -> tuple[Scheduler, Clock]:
    clock = Clock()

    def check(record: ProgramRecord) -> StopReason | None:
        return StopReason.BUDGET if refuse and record.program_id in refuse else None

    return Scheduler(policy, window=window, gang=gang, clock=clock, check=check), clock


def granted(futures: dict[str, asyncio.Future[None]]) -> list[str]:
    return sorted(
        name for name, f in futures.items() if f.done() and not f.cancelled() and f.exception() is None
    )


async def order_of(sched: Scheduler, records: list[ProgramRecord]) -> list[str]:
    """Queue one request per program behind a busy window, then release one at a time."""
    blocker = program("blocker")
    sched.acquire(blocker, 1)  # fills the window
    futures = {r.program_id: sched.acquire(r, 1) for r in records}
    order = []
    for _ in records:
        sched.release(1)
        newly = [n for n in granted(futures) if n not in order]
        assert len(newly) == 1
        order += newly
    return order


async def test_fcfs_serves_by_program_arrival() -> None:
    sched, _ = scheduler(fcfs())
    records = [program("late", arrival=3), program("early", arrival=1), program("middle", arrival=2)]
    assert await order_of(sched, records) == ["early", "middle", "late"]


async def test_shortest_remaining_work_uses_certaindex() -> None:
    sched, _ = scheduler(shortest_remaining_work())
    long, short = program("long", expected=5000), program("short", expected=500)
    sure = program("sure", expected=5000)
    sure.account.steps, sure.account.certainty = 2, 0.95  # nearly settled: little work left
    assert await order_of(sched, [long, short, sure]) == ["sure", "short", "long"]


async def test_aging_prevents_starvation() -> None:
    sched, clock = scheduler(shortest_remaining_work() + aging(1.0))
    blocker = program("blocker")
    sched.acquire(blocker, 1)
    old_long = program("old-long", expected=2000)  # 20 s of work at 0.01 s/token
    starved = sched.acquire(old_long, 1)
    for t in range(1, 40):  # a stream of short programs arrives, one per second
        clock.now = float(t)
        sched.acquire(program(f"short-{t}", arrival=t, expected=100), 1)  # 1 s of work
        sched.release(1)
        if starved.done():
            break
    assert starved.done(), "the long program starved"
    assert clock.now <= 25  # it waited about its work's worth, not forever


async def test_least_laxity_and_infeasible_demotion() -> None:
    sched, _ = scheduler(least_laxity())
    relaxed = program("relaxed", deadline=100.0)
    urgent = program("urgent", deadline=12.0)  # 10 s of work: 2 s of slack
    none = program("no-deadline")
    assert await order_of(sched, [relaxed, none, urgent]) == ["urgent", "relaxed", "no-deadline"]
    sched, clock = scheduler(shortest_remaining_work() + demote_infeasible())
    clock.now = 50.0
    hopeless = program("missed", expected=100, deadline=50.5)  # 1 s of work, 0.5 s left
    feasible = program("fine", expected=1000, deadline=100.0)
    assert await order_of(sched, [hopeless, feasible]) == ["fine", "missed"]


async def test_gang_dispatches_a_programs_requests_together() -> None:
    sched, _ = scheduler(fcfs(), window=4)
    a, b = program("a", arrival=0), program("b", arrival=1)
    blockers = [sched.acquire(program(f"x{i}", arrival=-1), 1) for i in range(4)]
    assert all(f.done() for f in blockers) and sched.in_flight == 4
    a_parts = [sched.acquire(a, 3) for _ in range(3)]  # 9 sequences: more than the window
    b_part = sched.acquire(b, 1)
    sched.release(1)  # one slot frees: a's whole gang goes, overshooting the window
    assert all(f.done() for f in a_parts) and not b_part.done()
    assert sched.in_flight == 3 + 9
    sched2, _ = scheduler(fcfs(), window=4, gang=False)
    for i in range(4):
        sched2.acquire(program(f"y{i}", arrival=-1), 1)
    parts = [sched2.acquire(a, 3) for _ in range(3)]
    sched2.release(1)
    assert sum(f.done() for f in parts) == 1  # without gangs, one request at a time


async def test_window_none_sends_everything_and_refusal_raises_budget() -> None:
    sched, _ = scheduler(fcfs(), window=None, refuse={"broke"})
    futures = [sched.acquire(program(f"p{i}"), 30) for i in range(50)]
    assert all(f.done() for f in futures) and sched.in_flight == 1500
    refused = sched.acquire(program("broke"), 1)
    with pytest.raises(BudgetExhausted):
        refused.result()
    with pytest.raises(ValueError, match="window"):
        scheduler(fcfs(), window=0)


async def test_saturated_while_the_window_is_full() -> None:
    sched, _ = scheduler(fcfs(), window=4)
    assert not sched.saturated()
    sched.acquire(program("a"), 3)
    assert not sched.saturated()  # one sequence still fits
    sched.acquire(program("b"), 1)
    assert sched.saturated() and sched.waiting == 0  # full
    sched.release(1)
    assert not sched.saturated()
    big = sched.acquire(program("big"), 2)  # overshoots the window as the head gang
    assert big.done() and sched.in_flight == 5 and sched.saturated()
    waiting = sched.acquire(program("c"), 1)
    assert not waiting.done() and sched.waiting == 1
    sched.release(2)
    assert waiting.done() and sched.in_flight == 4 and sched.saturated()  # full again
    unbounded, _ = scheduler(fcfs(), window=None)
    unbounded.acquire(program("d"), 1000)
    assert not unbounded.saturated()


async def test_discard_cancels_waiting_requests() -> None:
    sched, _ = scheduler(fcfs(), window=1)
    sched.acquire(program("busy"), 1)
    gone = program("gone")
    waiting = sched.acquire(gone, 1)
    sched.discard(gone)
    assert waiting.cancelled() and sched.waiting == 0
    sched.release(1)
    assert sched.in_flight == 0


def test_policies_compose_and_weigh() -> None:
    record = program("p", arrival=5.0, expected=1000.0)
    combined = 2 * fcfs() + shortest_remaining_work()
    assert combined.key(record, 0.0) == pytest.approx(2 * 5.0 + 10.0)
    assert (fcfs() + aging(0.5) + shortest_remaining_work()).key(record, 4.0) == pytest.approx(5 + 2 + 10)
    with pytest.raises(ValueError):
        aging(-1)


async def test_priority_hints_reach_the_server(faulty_server: FaultyServer) -> None:
    faulty_server.reset()
    async with (
        Endpoint(faulty_server.base_url("ok"), model="faulty-model", capabilities=Capabilities()) as endpoint,
        Runtime(endpoint, priority_hints=True, policy=fcfs()) as runtime,
    ):

        async def one_request(ctx: ProgramContext) -> ProgramResult:
            await ctx.generate(
                messages=[{"role": "user", "content": "hi"}], params=SamplingParams(max_tokens=4)
            )
            return ProgramResult.best_so_far(ctx, StopReason.CAP)

        await runtime.run(one_request)
    bodies = [r.json for r in faulty_server.requests("ok") if r.path.endswith("completions")]
    assert bodies and all(isinstance(b.get("priority"), int) for b in bodies)
    faulty_server.reset()
    async with (
        Endpoint(faulty_server.base_url("ok"), model="faulty-model", capabilities=Capabilities()) as endpoint,
        Runtime(endpoint) as runtime,
    ):
        await runtime.run(one_request)
    bodies = [r.json for r in faulty_server.requests("ok") if r.path.endswith("completions")]
    assert bodies and all("priority" not in b for b in bodies)  # off by default


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_keeps_finished_results(tmp_path: object) -> None:
    traces = TRACES / "svamp-codex-sc30.jsonl"
    if not traces.exists():
        pytest.skip("recorded traces absent")
    # One program never finishes, so the batch can only end by Ctrl-C; Ctrl-C is sent once the
    # child reports a finished program (an observable event, not a guess at how long a batch takes).
    script = textwrap.dedent(f"""
        import asyncio, threading
        from dynasor_client import Endpoint, as_program, run_batch_sync
        from dynasor_client.algorithms import self_consistency
        from dynasor_client.replay import ReplayServer
        from dynasor_client.traces import load_traces

        qs = load_traces({str(traces)!r})[:40]
        loop = asyncio.new_event_loop()
        server = ReplayServer(qs, profile="llama3-8b-h100-80gb", time_scale=0.3)
        loop.run_until_complete(server.__aenter__())
        threading.Thread(target=loop.run_forever, daemon=True).start()
        endpoint = Endpoint(server.base_url, capabilities=server.capabilities)

        def announced(program):
            async def run(context):
                result = await program(context)
                print("finished", flush=True)
                return result
            return run

        async def never_finishes(context):
            await asyncio.Event().wait()

        programs = [announced(as_program(self_consistency, q.question, n=30, rule="paper")) for q in qs]
        print("ready", flush=True)
        batch = run_batch_sync(endpoint, [*programs, never_finishes], concurrency=4, progress=False)
        print("RESULT", batch.interrupted, batch.finished, len(batch), flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    assert proc.stdout.readline().strip() == "finished"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, err[-2000:]
    _, interrupted, finished, total = line.split()
    assert interrupted == "True" and 0 < int(finished) < int(total) == 41


def test_admission_policies() -> None:
    from dynasor_client.budget import AdmissionRequest, Load, admit_all, degrade_infeasible, reject_infeasible

    busy = Load(backlog_tokens=9000, throughput_tps=1000, active=10)  # 9 s of work queued
    unknown = Load(backlog_tokens=9000, throughput_tps=None, active=10)
    fits = AdmissionRequest(deadline_s=20, expected_tokens=2000, token_cap=None)
    late = AdmissionRequest(deadline_s=10, expected_tokens=2000, token_cap=None)
    hopeless = AdmissionRequest(deadline_s=9.1, expected_tokens=2000, token_cap=None)
    assert reject_infeasible()(fits, busy).admit
    decision = reject_infeasible()(late, busy)
    assert not decision.admit and "after its 10.0 s deadline" in decision.reason
    assert reject_infeasible()(late, unknown).admit  # nothing measured yet: admit
    degraded = degrade_infeasible()(late, busy)
    assert degraded.admit and degraded.token_cap == 1000  # what fits in the second left
    assert not degrade_infeasible()(hopeless, busy).admit  # 100 tokens < a quarter of 2000
    assert admit_all()(hopeless, busy).admit


def test_token_history_matches_its_definition() -> None:
    import random

    from dynasor_client.runtime._states import TokenHistory

    rng = random.Random(0)
    history, recent = TokenHistory(20), []
    assert history.mean() is None and history.mean_residual(0) is None
    for _ in range(200):
        total = rng.randint(0, 500)
        history.add(total)
        recent = [*recent, total][-20:]  # only the last 20 count
        assert history.mean() == pytest.approx(sum(recent) / len(recent))
        for spent in (0, 120, 250, 499, 500):
            longer = [t - spent for t in recent if t > spent]
            expected = sum(longer) / len(longer) if longer else None
            assert history.mean_residual(spent) == (expected and pytest.approx(expected))
