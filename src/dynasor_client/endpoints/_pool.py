"""Several replicas of one model behind one object.

Every request of one program goes to the same replica, so the replica's prefix cache (the question,
the shared chain of thought) is reused: the default policy is :class:`~._routing.PrefixAffinity`
over :class:`~._routing.LeastOutstanding` (a new program goes to the replica with the fewest
requests in flight). A replica whose requests keep failing (after the endpoint's own retries) is
taken out; a request that failed on it moves to another one; it comes back once a health probe
passes (:class:`~._routing.HealthCheck`: exponential backoff between probes).

Nothing here assumes one server per replica's URL beyond what the endpoint itself does: each
replica detects its own capabilities, and a request is planned with those of the replica it goes
to (so a failover to a replica of another kind re-plans it). A replica may itself be a router (a
gateway in front of several servers); see docs/distributed.md for what then holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._exceptions import EndpointError, EndpointTimeout, EndpointUnavailable, ServerError
from .._log import get_logger, program_id_var
from ._capabilities import Capabilities
from ._endpoint import Endpoint
from ._routing import (
    HealthCheck,
    PrefixAffinity,
    Replica,
    RouteEvent,
    RouteEventKind,
    RoutingPolicy,
    prefix_key,
)
from ._types import Generation, Message, Prompt

log = get_logger("dynasor_client.endpoints")

# Failures that say something about the replica rather than about the request.
REPLICA_FAILURES = (EndpointUnavailable, EndpointTimeout, ServerError)
RouteListener = Callable[[RouteEvent], None]


class EndpointPool:
    """Replicas of one model with per-program affinity, load balancing and failure isolation.

    Args:
        endpoints: the replicas (same model).
        policy: the :class:`~._routing.RoutingPolicy` (default: prefix affinity over least
            outstanding requests).
        health: how a replica taken out comes back (default :class:`~._routing.HealthCheck`).
        failure_threshold: consecutive failed requests that take a replica out.
        max_pinned: programs remembered for affinity by the default policy (oldest forgotten first).
        clock: monotonic seconds (injectable for tests and virtual time).
        listeners: called with each :class:`~._routing.RouteEvent` (a :class:`Runtime` adds its own).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        policy: RoutingPolicy | None = None,
        health: HealthCheck | None = None,
        failure_threshold: int = 3,
        max_pinned: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        listeners: Sequence[RouteListener] = (),
    ) -> None:
        if not endpoints:
            raise ValueError("EndpointPool needs at least one endpoint")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.endpoints = list(endpoints)
        self.replicas = [Replica(e, i) for i, e in enumerate(self.endpoints)]
        self._by_endpoint = {id(r.endpoint): r for r in self.replicas}
        self.policy = policy or PrefixAffinity(max_keys=max_pinned)
        self.health = health or HealthCheck()
        self.failure_threshold = failure_threshold
        self.listeners = list(listeners)
        self._clock = clock
        self._max_served = max_pinned
        self._served: dict[str, list[str]] = {}  # program id -> replicas that served it, in order

    async def __aenter__(self) -> EndpointPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for replica in self.replicas:
            if replica.probing is not None:
                replica.probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replica.probing
        for endpoint in self.endpoints:
            await endpoint.aclose()

    # ---------------------------------------------------------------- state

    def replica(self, endpoint: Endpoint) -> Replica:
        return self._by_endpoint[id(endpoint)]

    def healthy(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` gets requests now (up, or due to be tried again without probes)."""
        return self._usable(self.replica(endpoint), self._clock())

    def _usable(self, replica: Replica, now: float) -> bool:
        return not replica.down or (self.health.path is None and replica.retry_at <= now)

    def _emit(
        self, kind: RouteEventKind, replica: Replica, program_id: str | None = None, **data: Any
    ) -> None:
        event = RouteEvent(kind, replica.name, program_id, data)
        for listener in self.listeners:
            listener(event)

    def _up(self) -> list[Replica]:
        """The replicas that may get requests now (starting the probes that are due)."""
        now = self._clock()
        for replica in self.replicas:
            if replica.down and replica.retry_at <= now and self.health.path is not None:
                self._start_probe(replica)
        up = [r for r in self.replicas if self._usable(r, now)]
        # Everything is out: try the replica that comes back first rather than fail outright.
        return up or [min(self.replicas, key=lambda r: r.retry_at)]

    # ---------------------------------------------------------------- routing

    def endpoint_for(self, affinity: str | None = None) -> Endpoint:
        """The replica for ``affinity`` (default: the current program id), pinning new programs."""
        return self._choose(affinity or program_id_var.get(), self._up()).endpoint

    def _choose(self, key: str | None, candidates: Sequence[Replica]) -> Replica:
        before = self.policy.placed(key) if key else None
        chosen = self.policy.choose(candidates, key)
        # An event when a key is placed or moved (a policy that does not pin: every request).
        if key and (before is not chosen or self.policy.placed(key) is None):
            program = None if key.startswith("prefix:") else key
            self._emit("routed", chosen, program, previous=None if before is None else before.name)
        return chosen

    async def capabilities(self, affinity: str | None = None) -> Capabilities:
        """The capabilities of the replica that ``affinity`` (default: the current program) is on:
        each replica detects its own."""
        return await self.endpoint_for(affinity).capabilities()

    def release(self, affinity: str) -> list[str]:
        """Forget a finished program's pinning; returns the replicas that served it, in order."""
        self.policy.forget(affinity)
        return self._served.pop(affinity, [])

    def record(self, endpoint: Endpoint, error: BaseException | None) -> None:
        """Count a request's outcome towards the replica's health."""
        replica = self.replica(endpoint)
        if error is None or not isinstance(error, REPLICA_FAILURES):
            replica.failures = replica.downs = 0
            if replica.down:
                self._back(replica, via="request")
            return
        replica.failures += 1
        if replica.down:  # a request tried while it was out failed: wait longer
            replica.retry_at = self._clock() + self.health.delay(replica.downs)
            replica.downs += 1
        elif replica.failures >= self.failure_threshold:
            self._take_out(replica, error)

    def _take_out(self, replica: Replica, error: BaseException) -> None:
        delay = self.health.delay(replica.downs)
        replica.down, replica.failures = True, 0
        replica.downs += 1
        replica.retry_at = self._clock() + delay
        log.warning("replica %s taken out after repeated failures (%s); back in %.1fs at the earliest",
                    replica.name, error, delay)  # fmt: skip
        self._emit("replica_down", replica, error=f"{type(error).__name__}: {error}", retry_in_s=delay)

    def _back(self, replica: Replica, *, via: str) -> None:
        replica.down, replica.failures = False, 0
        log.warning("replica %s is back (%s)", replica.name, via)
        self._emit("replica_up", replica, via=via)

    # ---------------------------------------------------------------- health probes

    def _start_probe(self, replica: Replica) -> None:
        if replica.probing is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside a loop (endpoint_for from sync code): probed on the next request
        replica.probing = loop.create_task(self._probe(replica), name=f"probe {replica.name}")

    async def _probe(self, replica: Replica) -> None:
        try:
            ok = await self.health.probe(replica.endpoint)
        finally:
            replica.probing = None
        if not replica.down:
            return  # brought back meanwhile by a request
        if ok:
            self._back(replica, via="probe")
            return
        delay = self.health.delay(replica.downs)
        replica.downs += 1
        replica.retry_at = self._clock() + delay
        log.info("replica %s still down; next probe in %.1fs", replica.name, delay)

    async def check(self) -> list[bool]:
        """Probe every replica that is out now (not waiting for its backoff) and wait for the
        answers; whether each replica is up afterwards."""
        down = [r for r in self.replicas if r.down]
        for replica in down:
            replica.retry_at = min(replica.retry_at, self._clock())
            self._start_probe(replica)
        await asyncio.gather(*(r.probing for r in down if r.probing is not None))
        return [not r.down for r in self.replicas]

    # ---------------------------------------------------------------- requests

    async def complete(self, prompt: Prompt, *, affinity: str | None = None, **kwargs: Any) -> Generation:
        """:meth:`Endpoint.complete` on the program's replica, moving to another if it fails."""
        return await self._route(affinity, lambda: prefix_key(prompt), lambda e: e.complete(prompt, **kwargs))

    async def chat(
        self, messages: Sequence[Message], *, affinity: str | None = None, **kwargs: Any
    ) -> Generation:
        """:meth:`Endpoint.chat` on the program's replica, moving to another if it fails."""
        return await self._route(
            affinity, lambda: prefix_key(messages=messages), lambda e: e.chat(messages, **kwargs)
        )

    async def _route(
        self, affinity: str | None, prefix: Callable[[], str], call: Callable[[Endpoint], Any]
    ) -> Generation:
        program = affinity or program_id_var.get()
        key = program or prefix()
        tried: list[Replica] = []
        while True:
            up = self._up()
            replica = self._choose(key, [r for r in up if r not in tried] or up)
            tried.append(replica)
            try:
                result: Generation = await call(replica.endpoint)
            except EndpointError as exc:
                self.record(replica.endpoint, exc)
                others_left = any(self._usable(r, self._clock()) for r in self.replicas if r not in tried)
                if not isinstance(exc, REPLICA_FAILURES) or not others_left:
                    raise
                log.warning(
                    "replica %s failed (%s); moving the request to another replica", replica.name, exc
                )
                continue
            self.record(replica.endpoint, None)
            if program is not None:
                self._note_served(program, replica)
            return result

    def _note_served(self, program: str, replica: Replica) -> None:
        served = self._served.setdefault(program, [])
        if not served or served[-1] != replica.name:
            served.append(replica.name)
        if len(self._served) > self._max_served:  # programs never released (no runtime): oldest out
            del self._served[next(iter(self._served))]
