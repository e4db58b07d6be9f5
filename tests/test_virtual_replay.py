"""The virtual-time event loop, and the client stack against the in-process replay on it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence

import pytest

from dynasor_client import DynasorError, Endpoint
from dynasor_client._log import program_scope
from dynasor_client.replay import (
    InProcessReplay,
    VirtualClockSimulator,
    VirtualTimeDeadlock,
    VirtualTimeLoop,
    run_virtual,
)
from dynasor_client.traces import TraceQuestion, TraceSample
from tests.support.replay import replay_endpoint, traces_or_skip
from tests.test_replay_engine import tiny_questions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SVAMP = "svamp-codex-sc30.jsonl"
Submission = tuple[str, float, tuple[Hashable, ...], int]


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip(SVAMP)


def _prompt(q: TraceQuestion) -> str:
    return f"Question: {q.question}\nAnswer:"


# ---------------------------------------------------------------------------- the loop


def test_sleep_jumps_the_clock() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        loops.append(loop)
        before = loop.time()
        await asyncio.sleep(3600)
        return before, loop.time()

    wall = time.perf_counter()
    before, after = run_virtual(main(), start=100.0)
    wall = time.perf_counter() - wall
    assert isinstance(loops[0], VirtualTimeLoop)
    assert before == 100.0 and after == 3700.0
    assert wall < 1.0
    assert loops[0].is_closed()


def test_timers_keep_their_order() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        events: list[tuple[str, float]] = []

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            events.append((name, loop.time()))

        loop.call_at(2.5, lambda: events.append(("call_at", loop.time())))
        loop.call_later(0.25, lambda: events.append(("call_later", loop.time())))
        async with asyncio.TaskGroup() as tg:
            for name, delay in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.5), ("z", 0.0)):
                tg.create_task(sleeper(name, delay))
        return events

    events = run_virtual(main())
    assert events == [
        ("z", 0.0),
        ("call_later", 0.25),
        ("a", 1.0),
        ("a2", 1.5),
        ("b", 2.0),
        ("call_at", 2.5),
        ("c", 3.0),
    ]


def test_timeouts_fire_at_their_virtual_time() -> None:
    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(100)
        first = loop.time() - start
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 7.5)
        second = loop.time() - start
        async with asyncio.timeout(5):  # a timeout that does not expire leaves the time alone
            await asyncio.sleep(1)
        return first, second, loop.time() - start == 13.5

    assert run_virtual(main()) == (5.0, 12.5, True)


def test_executor_jobs_are_never_overtaken() -> None:
    """A thread's 0.2 s of real work finishes before a virtual 10 s sleep started after it."""

    async def main() -> tuple[list[str], float, float]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        at_thread: list[float] = []

        async def job() -> None:
            await asyncio.to_thread(time.sleep, 0.2)
            at_thread.append(loop.time())
            order.append("thread")

        async def sleeper() -> None:
            await asyncio.sleep(10)
            order.append("sleep")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(job())
            await asyncio.sleep(0)  # the job is in the executor before the sleep starts
            tg.create_task(sleeper())
        return order, at_thread[0], loop.time()

    wall = time.perf_counter()
    order, at_thread, end = run_virtual(main())
    wall = time.perf_counter() - wall
    assert order == ["thread", "sleep"]
    assert at_thread < 1.0  # the clock stood still while the thread worked
    assert end == 10.0
    assert wall >= 0.2


def test_a_deadlock_raises_instead_of_hanging() -> None:
    outcome: list[BaseException | str] = []

    def run() -> None:
        async def main() -> None:
            await asyncio.sleep(1)
            await asyncio.Event().wait()  # nothing can ever set it

        try:
            run_virtual(main())
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the virtual-time loop hung on a deadlock"
    assert len(outcome) == 1 and isinstance(outcome[0], VirtualTimeDeadlock)
    assert isinstance(outcome[0], DynasorError) and isinstance(outcome[0], RuntimeError)
    assert "deadlock" in str(outcome[0])


# ---------------------------------------------------------------------------- in-process replay


def _predict(
    profile: str,
    requests: Sequence[tuple[Hashable, float, Sequence[Hashable], int]],
) -> dict[Hashable, tuple[float, float]]:
    """(arrival, finish) of each request, from a discrete-event simulation of the timing model."""
    sim = VirtualClockSimulator(profile)
    simulated = {rid: sim.submit(rid, keys, output, at=at) for rid, at, keys, output in requests}
    sim.run()
    out = {}
    for rid, request in simulated.items():
        assert request.finish_time is not None
        out[rid] = (request.arrival_time, request.finish_time)
    return out


def test_one_request_takes_the_modelled_latency(svamp: list[TraceQuestion]) -> None:
    async def main() -> tuple[float, float, list[Submission], int, int]:
        loop = asyncio.get_running_loop()
        async with InProcessReplay(svamp, record_submissions=True) as replay, replay.endpoint() as endpoint:
            assert replay.origin == 0.0
            started = loop.time()
            result = await endpoint.complete(_prompt(svamp[3]), max_tokens=200)
            latency = loop.time() - started
            return (
                started,
                latency,
                list(replay.service.submissions),
                result.usage.completion_tokens,
                int(replay.metrics()["finished"]),
            )

    started, latency, submissions, tokens, finished = run_virtual(main())
    assert len(submissions) == 1 and finished == 1
    rid, arrival, keys, output = submissions[0]
    assert arrival == started == 0.0
    assert output == tokens > 10
    (at, finish) = _predict("llama3-8b-h100-80gb", [(rid, 0.0, keys, output)])[rid]
    assert latency > 0.05  # a real wait, not a zero
    assert abs(latency - (finish - at)) < 1e-9


def test_concurrent_requests_get_the_batching_latencies(svamp: list[TraceQuestion]) -> None:
    """Staggered, overlapping requests (some share a question: prefix caching) on the 'test' profile."""
    gap = 0.03
    count = 10

    async def main() -> tuple[dict[str, float], list[Submission]]:
        loop = asyncio.get_running_loop()
        latencies: dict[str, float] = {}
        async with (
            InProcessReplay(svamp, profile="test", record_submissions=True) as replay,
            replay.endpoint() as endpoint,
        ):

            async def one(i: int) -> None:
                await asyncio.sleep(i * gap)
                with program_scope(f"concurrent-{i}"):
                    started = loop.time()
                    await endpoint.complete(_prompt(svamp[i % 7]), max_tokens=120, n=1 + (i % 3 == 0))
                    latencies[f"r{i}"] = loop.time() - started

            async with asyncio.TaskGroup() as tg:
                for i in range(count):
                    tg.create_task(one(i))
            return latencies, list(replay.service.submissions)

    latencies, submissions = run_virtual(main())
    assert len(submissions) == sum(1 + (i % 3 == 0) for i in range(count))
    # Each HTTP request's choices were submitted together; requests in order of arrival.
    by_request: dict[str, list[Submission]] = {}
    for sub in submissions:
        by_request.setdefault(sub[0].rsplit("/", 1)[0], []).append(sub)
    assert len(by_request) == count
    # The arrivals are the times the client sent the requests (virtual: exactly i * gap).
    ordered = sorted(by_request.values(), key=lambda subs: subs[0][1])
    expected_arrivals = [i * gap for i in range(count)]
    assert [subs[0][1] for subs in ordered] == pytest.approx(expected_arrivals, abs=1e-12)

    # The prediction uses the intended arrival times, not the recorded ones.
    workload = [
        (rid, i * gap, keys, output) for i, subs in enumerate(ordered) for rid, _, keys, output in subs
    ]
    predicted = _predict("test", workload)
    alone = {}  # each choice's latency on an idle model
    for rid, _, keys, output in workload:
        at, finish = _predict("test", [(rid, 0.0, keys, output)])[rid]
        alone[rid] = finish - at
    slower = 0
    for i, subs in enumerate(ordered):
        expected = max(predicted[rid][1] for rid, *_ in subs) - i * gap
        # Requests are numbered r0.. by arrival order: the same order.
        assert abs(latencies[f"r{i}"] - expected) < 1e-9
        slower += expected > 1.05 * max(alone[rid] for rid, *_ in subs)
    assert slower >= 3  # batching and queueing made several of them slower than alone


def test_texts_equal_those_of_a_replay_server(svamp: list[TraceQuestion]) -> None:
    """The same requests, in the same order, to a real-socket ReplayServer and in-process."""
    questions = svamp[:40]
    requests = [(f"prog-{i % 3}", i % 4, 1 + i % 2) for i in range(8)]

    async def ask(endpoint: Endpoint) -> list[list[str]]:
        texts = []
        for program, qi, n in requests:
            with program_scope(program):
                result = await endpoint.complete(_prompt(questions[qi]), n=n, max_tokens=96)
            texts.append([c.raw_text for c in result.choices])
        texts.append([str(len(await endpoint.tokenize("the replay vocabulary")))])
        return texts

    async def over_http() -> list[list[str]]:
        async with replay_endpoint(questions, seed=7) as endpoint:
            return await ask(endpoint)

    async def in_process() -> list[list[str]]:
        async with InProcessReplay(questions, seed=7) as replay, replay.endpoint() as endpoint:
            return await ask(endpoint)

    expected = asyncio.run(over_http())
    got = run_virtual(in_process())
    assert got == expected
    assert len({t for ts in expected[:-1] for t in ts}) > 4  # distinct samples, not one repeated
    assert int(expected[-1][0]) > 0  # /tokenize answered (in-process: through the same transport)


def _long_question() -> TraceQuestion:
    """One question with 1,500-token samples: two fill the 'test' profile's 4,096-token KV cache."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    samples = tuple(
        TraceSample(
            answer=str(i),
            num_tokens=1500,
            text=" ".join(words[(i + j) % 5] for j in range(1499)) + f" {i}",
            finish_reason="stop",
        )
        for i in range(8)
    )
    return TraceQuestion(
        id="long", question="Recite the long list of Greek letters.", gold="0", samples=samples
    )


def test_cancelling_the_client_aborts_the_modelled_request() -> None:
    q = _long_question()

    async def main() -> tuple[dict[str, float], dict[str, float], float, float]:
        loop = asyncio.get_running_loop()
        async with InProcessReplay([q], profile="test") as replay, replay.endpoint() as endpoint:
            tasks = [asyncio.create_task(endpoint.complete(q.question, max_tokens=1500)) for _ in range(4)]
            await asyncio.sleep(1.0)  # two run (the KV cache holds two), two wait
            busy = replay.metrics()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await task
            freed = replay.metrics()
            # The freed memory serves a new request at once, from an idle model.
            started = loop.time()
            result = await endpoint.complete(q.question, max_tokens=20)
            assert result.choices[0].num_tokens == 20
            return busy, freed, loop.time() - started, started

    busy, freed, latency, started = run_virtual(main())
    assert busy["running"] == 2 and busy["waiting"] == 2 and busy["aborted"] == 0
    assert busy["kv_used_tokens"] > 0
    assert freed["running"] == 0 and freed["waiting"] == 0
    assert freed["aborted"] == 4 and freed["finished"] == 0 and freed["kv_used_tokens"] == 0
    assert started == 1.0  # the cancellations took no virtual time
    assert latency < 1.0  # not queued behind the aborted requests (each needed ~15 s modelled)


def test_many_requests_take_little_wall_time(svamp: list[TraceQuestion]) -> None:
    count, gap = 200, 0.2

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        async with (
            InProcessReplay(svamp[:50]) as replay,
            replay.endpoint(max_in_flight=256) as endpoint,
        ):

            async def one(i: int) -> None:
                await asyncio.sleep(i * gap)
                with program_scope(f"many-{i % 50}"):
                    await endpoint.complete(_prompt(svamp[i % 50]), max_tokens=256)

            async with asyncio.TaskGroup() as tg:
                for i in range(count):
                    tg.create_task(one(i))
            assert replay.metrics()["finished"] == count
            return loop.time(), replay.metrics()["busy_time_s"]

    wall = time.perf_counter()
    simulated, busy = run_virtual(main())
    wall = time.perf_counter() - wall
    print(
        f"\n{count} requests: {simulated:.1f} s simulated ({busy:.1f} s modelled GPU busy) in {wall:.2f} s "
        f"wall, {wall / count * 1000:.1f} ms wall per request, {simulated / wall:.0f}x real time"
    )
    assert simulated >= (count - 1) * gap
    assert wall < simulated / 2  # loose: measured about 15x on a quiet machine


async def test_works_in_real_time_under_the_standard_loop() -> None:
    q = tiny_questions()[0]
    loop = asyncio.get_running_loop()
    assert not isinstance(loop, VirtualTimeLoop)
    async with (
        InProcessReplay(tiny_questions(), profile="test", record_submissions=True) as replay,
        replay.endpoint() as endpoint,
    ):
        started = loop.time()
        result = await endpoint.complete(q.question)
        latency = loop.time() - started
        rid, _, keys, output = replay.service.submissions[0]
    assert result.choices[0].num_tokens == output
    (arrival, finish) = _predict("test", [(rid, 0.0, keys, output)])[rid]
    modelled = finish - arrival
    assert modelled > 0.02
    assert modelled * 0.9 <= latency < modelled + 1.0  # real time, not as fast as possible
