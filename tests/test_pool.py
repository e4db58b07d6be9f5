"""EndpointPool over real (faulty) loopback replicas: affinity, balancing, failure isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from dynasor_client import Capabilities, Endpoint, program_scope
from dynasor_client._exceptions import BadRequest, EndpointUnavailable, ServerError
from dynasor_client.endpoints import (
    EndpointPool,
    HealthCheck,
    LeastOutstanding,
    PrefixAffinity,
    RetryPolicy,
    RouteEvent,
)
from tests.support.faulty_server import MODEL_ID, FaultyServer

PROMPT = "what is forty two"
MESSAGES = [{"role": "user", "content": "what is forty two"}]
ONCE = RetryPolicy(max_attempts=1, initial_backoff_s=0.01, max_backoff_s=1, jitter_s=0.01, max_total_s=5)


def passive(backoff_s: float) -> HealthCheck:
    """No probes: a replica taken out gets real requests again once its backoff has passed."""
    return HealthCheck(path=None, backoff_s=backoff_s, max_backoff_s=1000)


@pytest.fixture(autouse=True)
def _fresh(faulty_server: FaultyServer) -> Iterator[None]:
    faulty_server.reset()
    yield
    assert faulty_server.errors() == []


class FakeClock:
    """Monotonic seconds advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(server: FaultyServer, scenario: str, **kwargs: Any) -> Endpoint:
    kwargs.setdefault("retry", ONCE)
    return Endpoint(
        server.base_url(scenario), model=MODEL_ID, capabilities=Capabilities(), timeout=5.0, **kwargs
    )


def counts(server: FaultyServer, *scenarios: str) -> list[int]:
    return [server.generation_count(s) for s in scenarios]


# "slow-0" and "ok" answer alike; distinct scenario names let the server count each replica apart.


async def test_programs_stick_to_their_replica(faulty_server: FaultyServer) -> None:
    async with EndpointPool([replica(faulty_server, "ok"), replica(faulty_server, "slow-0")]) as pool:
        for _ in range(3):
            generation = await pool.complete(PROMPT, affinity="p1", max_tokens=4)
            assert generation.texts == ["answer 0: 42"]
        assert counts(faulty_server, "ok", "slow-0") == [3, 0]
        # A program scope is the affinity when none is given; a new program goes to the idle replica.
        with program_scope("p2"):
            for _ in range(3):
                await pool.chat(MESSAGES)
        assert counts(faulty_server, "ok", "slow-0") == [3, 3]
        assert all(r.headers["x-program-id"] == "p2" for r in faulty_server.requests("slow-0"))
        assert pool.endpoint_for("p1") is pool.endpoints[0]
        assert pool.endpoint_for("p2") is pool.endpoints[1]
        # A released program is forgotten; it may land anywhere next time.
        pool.release("p1")
        assert pool.endpoint_for("p3") is pool.endpoints[0]  # least loaded again


async def test_new_programs_balance_by_pinned_programs(faulty_server: FaultyServer) -> None:
    async with EndpointPool([replica(faulty_server, "ok"), replica(faulty_server, "slow-0")]) as pool:
        for i in range(10):
            await pool.complete(PROMPT, affinity=f"program-{i}")
        assert counts(faulty_server, "ok", "slow-0") == [5, 5]
        for i in range(10):  # every program stays where it started
            await pool.complete(PROMPT, affinity=f"program-{i}")
        assert counts(faulty_server, "ok", "slow-0") == [10, 10]


async def test_least_outstanding_balances_requests_in_flight(faulty_server: FaultyServer) -> None:
    # Two equally slow replicas; without affinity only the requests in flight decide.
    a, b = replica(faulty_server, "slow-0.2"), replica(faulty_server, "slow-0.20")
    async with EndpointPool([a, b], policy=LeastOutstanding()) as pool:
        generations = await asyncio.gather(*(pool.complete(PROMPT) for _ in range(6)))
        assert len(generations) == 6
        assert counts(faulty_server, "slow-0.2", "slow-0.20") == [3, 3]
        assert a.outstanding == b.outstanding == 0


async def test_requests_outside_programs_follow_their_prefix(faulty_server: FaultyServer) -> None:
    a, b = replica(faulty_server, "slow-0.2"), replica(faulty_server, "slow-0.20")
    async with EndpointPool([a, b]) as pool:
        # One prompt, no program: all on one replica (its prefix cache), though the other is idle.
        await asyncio.gather(*(pool.complete(PROMPT) for _ in range(4)))
        assert counts(faulty_server, "slow-0.2", "slow-0.20") == [4, 0]
        # Another prompt is a new key: placed on the least busy replica, then kept there.
        await asyncio.gather(pool.complete(PROMPT), pool.complete("another prompt"), pool.complete(PROMPT))
        assert counts(faulty_server, "slow-0.2", "slow-0.20") == [6, 1]
    # With a bound on the imbalance, a busy key moves to the idle replica: the third request finds
    # two in flight on its replica, none on the other, and moves the key; the rest follow it.
    a, b = replica(faulty_server, "slow-0.3"), replica(faulty_server, "slow-0.30")
    async with EndpointPool([a, b], policy=PrefixAffinity(max_imbalance=1)) as pool:
        await asyncio.gather(*(pool.complete(PROMPT) for _ in range(6)))
        assert counts(faulty_server, "slow-0.3", "slow-0.30") == [2, 4]


async def test_failing_replica_is_taken_out_and_tried_again(faulty_server: FaultyServer) -> None:
    clock = FakeClock()
    bad, good = replica(faulty_server, "status-503-99"), replica(faulty_server, "ok")
    async with EndpointPool([bad, good], failure_threshold=2, health=passive(30), clock=clock) as pool:
        # Program 1 lands on the failing replica and moves to the healthy one: still a success.
        first = await pool.complete(PROMPT, affinity="p1")
        assert first.texts == ["answer 0: 42"]
        assert counts(faulty_server, "status-503-99", "ok") == [1, 1]
        assert pool.healthy(bad)  # one failure is below the threshold
        assert pool.endpoint_for("p1") is good  # re-pinned where it succeeded

        # Program 2 is balanced onto the failing replica too: the second failure takes it out.
        await pool.complete(PROMPT, affinity="p2")
        assert counts(faulty_server, "status-503-99", "ok") == [2, 2]
        assert not pool.healthy(bad)

        # While it is out, nothing goes there, new programs included.
        for i in range(3, 7):
            await pool.complete(PROMPT, affinity=f"p{i}")
        assert counts(faulty_server, "status-503-99", "ok") == [2, 6]

        clock.now += 29
        await pool.complete(PROMPT, affinity="p7")
        assert counts(faulty_server, "status-503-99", "ok") == [2, 7]

        # After the backoff it is tried again (and, still failing, the request moves on).
        clock.now += 1
        assert pool.healthy(bad)
        again = await pool.complete(PROMPT, affinity="p8")
        assert again.texts == ["answer 0: 42"]
        assert counts(faulty_server, "status-503-99", "ok") == [3, 8]
        # Failing its trial doubles the backoff: out for 60 s now.
        assert not pool.healthy(bad)
        clock.now += 59
        assert not pool.healthy(bad)
        clock.now += 1
        assert pool.healthy(bad)


async def test_recovered_replica_gets_work_again(faulty_server: FaultyServer) -> None:
    clock = FakeClock()
    flaky, good = replica(faulty_server, "status-502-1"), replica(faulty_server, "ok")
    async with EndpointPool([flaky, good], failure_threshold=1, health=passive(10), clock=clock) as pool:
        await pool.complete(PROMPT, affinity="p1")  # fails on flaky (taken out), served by good
        assert not pool.healthy(flaky)
        clock.now += 10
        generation = await pool.complete(PROMPT, affinity="p2")  # flaky is back, and healed
        assert generation.texts == ["answer 0: 42"]
        assert counts(faulty_server, "status-502-1", "ok") == [2, 1]
        assert pool.endpoint_for("p2") is flaky


async def test_bad_request_is_not_failed_over(faulty_server: FaultyServer) -> None:
    bad, good = replica(faulty_server, "status-400-99"), replica(faulty_server, "ok")
    async with EndpointPool([bad, good], failure_threshold=1) as pool:
        for _ in range(3):
            with pytest.raises(BadRequest) as info:
                await pool.complete(PROMPT, affinity="p1")
            assert info.value.status == 400
        # The request's own fault: not retried elsewhere, and the replica stays in.
        assert counts(faulty_server, "status-400-99", "ok") == [3, 0]
        assert pool.healthy(bad)
        assert pool.endpoint_for("p1") is bad


async def test_all_replicas_out_still_tries_the_first_to_come_back(faulty_server: FaultyServer) -> None:
    clock = FakeClock()
    a, b = replica(faulty_server, "status-503-99"), replica(faulty_server, "status-502-99")
    async with EndpointPool([a, b], failure_threshold=1, health=passive(10), clock=clock) as pool:
        with pytest.raises(ServerError):  # fails on a, moves to b, fails there too
            await pool.complete(PROMPT, affinity="p1")
        assert counts(faulty_server, "status-503-99", "status-502-99") == [1, 1]
        assert not pool.healthy(a) and not pool.healthy(b)
        # Everything is out: the pool still makes one real attempt instead of refusing outright.
        clock.now += 1
        with pytest.raises(ServerError):
            await pool.complete(PROMPT, affinity="p2")
        assert sum(counts(faulty_server, "status-503-99", "status-502-99")) == 3


async def test_all_out_prefers_the_replica_back_soonest(faulty_server: FaultyServer) -> None:
    clock = FakeClock()
    bad, good = replica(faulty_server, "status-503-99"), replica(faulty_server, "ok")
    async with EndpointPool([bad, good], failure_threshold=1, health=passive(10), clock=clock) as pool:
        pool.record(good, ServerError("injected", status=503))  # good out until now + 10
        clock.now += 3
        with pytest.raises(ServerError):  # only bad is in: it fails and has nowhere to go
            await pool.complete(PROMPT, affinity="p1")
        assert counts(faulty_server, "status-503-99", "ok") == [1, 0]
        assert not pool.healthy(bad) and not pool.healthy(good)  # bad out until now + 10 too
        clock.now += 1
        generation = await pool.complete(PROMPT, affinity="p2")
        assert generation.texts == ["answer 0: 42"]
        assert counts(faulty_server, "status-503-99", "ok") == [1, 1]


def test_pool_argument_checks(faulty_server: FaultyServer) -> None:
    with pytest.raises(ValueError):
        EndpointPool([])
    with pytest.raises(ValueError):
        EndpointPool([replica(faulty_server, "ok")], failure_threshold=0)
    with pytest.raises(ValueError, match="backoff"):
        HealthCheck(backoff_s=10, max_backoff_s=1)
    with pytest.raises(ValueError, match="path"):
        HealthCheck(path="health")


# ---------------------------------------------------------------------------- health probes


def health_probes(server: FaultyServer, scenario: str) -> list[str]:
    return [r.path for r in server.requests(scenario) if r.path.endswith("/health")]


async def test_replica_taken_out_comes_back_when_its_probe_passes(faulty_server: FaultyServer) -> None:
    clock = FakeClock()
    events: list[RouteEvent] = []
    # Generation fails twice, then answers; /health always answers (the faulty server's rule).
    flaky, good = replica(faulty_server, "status-503-2"), replica(faulty_server, "ok")
    health = HealthCheck(backoff_s=5, max_backoff_s=60)
    async with EndpointPool(
        [flaky, good], failure_threshold=2, health=health, clock=clock, listeners=[events.append]
    ) as pool:
        await pool.complete(PROMPT, affinity="p1")  # fails on flaky, moves to good
        await pool.complete(PROMPT, affinity="p2")  # second failure: flaky out
        assert not pool.healthy(flaky)
        assert [e.kind for e in events if e.kind != "routed"] == ["replica_down"]
        assert events[-2].replica == flaky.name and events[-2].data["retry_in_s"] == 5
        # Before its backoff has passed, no probe goes out and no request goes there.
        await pool.complete(PROMPT, affinity="p3")
        assert not health_probes(faulty_server, "status-503-2")
        clock.now += 5
        # Due: the next routing decision starts the probe; the request itself goes elsewhere.
        await pool.complete(PROMPT, affinity="p4")
        assert counts(faulty_server, "status-503-2", "ok") == [2, 4]
        assert await pool.check() == [True, True]
        assert [e.kind for e in events if e.kind != "routed"] == ["replica_down", "replica_up"]
        assert events[-1].data == {"via": "probe"}
        assert len(health_probes(faulty_server, "status-503-2")) == 1
        generation = await pool.complete(PROMPT, affinity="p5")  # back, and least loaded
        assert generation.texts == ["answer 0: 42"]
        assert counts(faulty_server, "status-503-2", "ok") == [3, 4]


async def test_probes_back_off_exponentially_while_the_replica_is_down() -> None:
    clock = FakeClock()
    dead = Endpoint("http://127.0.0.1:9/v1", model=MODEL_ID, capabilities=Capabilities(), retry=ONCE)
    health = HealthCheck(backoff_s=1, max_backoff_s=4, timeout_s=2)
    async with EndpointPool([dead], failure_threshold=1, health=health, clock=clock) as pool:
        state = pool.replica(dead)
        with pytest.raises(EndpointUnavailable):
            await pool.complete(PROMPT, affinity="p1")
        assert state.down and state.retry_at == clock.now + 1
        waits = []
        for _ in range(4):
            clock.now = state.retry_at
            assert await pool.check() == [False]  # nothing listens on port 9
            waits.append(state.retry_at - clock.now)
        assert waits == [2, 4, 4, 4]  # doubling, capped at max_backoff_s


async def test_each_replica_plans_with_its_own_capabilities(faulty_server: FaultyServer) -> None:
    # A fleet of two kinds: one replica takes at most n=2 per request, the other any n.
    small = Endpoint(
        faulty_server.base_url("max-n-2"), model=MODEL_ID, capabilities=Capabilities(max_n=2), retry=ONCE
    )
    large = replica(faulty_server, "ok")
    async with EndpointPool([small, large]) as pool:
        assert pool.endpoint_for("p1") is small and pool.endpoint_for("p2") is large
        assert (await pool.capabilities("p1")).max_n == 2
        assert (await pool.capabilities("p2")).max_n is None
        on_small = await pool.complete(PROMPT, affinity="p1", n=3)
        on_large = await pool.complete(PROMPT, affinity="p2", n=3)
        assert len(on_small.choices) == len(on_large.choices) == 3
        assert (on_small.requests, on_large.requests) == (2, 1)  # split only where the replica needs it
        assert counts(faulty_server, "max-n-2", "ok") == [2, 1]
