"""Several replicas of one model behind one object.

Every request of one program goes to the same replica, so the replica's prefix cache (the question,
the shared chain of thought) is reused. A new program goes to the healthy replica with the fewest
requests outstanding. A replica whose requests keep failing (after the endpoint's own retries) is
taken out for ``cooldown_s`` and then tried again; a request that failed on it moves to another one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .._exceptions import EndpointError, EndpointTimeout, EndpointUnavailable, ServerError
from .._log import get_logger, program_id_var
from ._endpoint import Endpoint
from ._types import Generation, Message, Prompt

log = get_logger("dynasor_client.endpoints")

# Failures that say something about the replica rather than about the request.
REPLICA_FAILURES = (EndpointUnavailable, EndpointTimeout, ServerError)


class EndpointPool:
    """Replicas of one model with per-program affinity, load balancing and failure isolation.

    Args:
        endpoints: the replicas (same model).
        failure_threshold: consecutive failed requests that take a replica out.
        cooldown_s: how long it stays out before it is tried again.
        max_pinned: programs remembered for affinity (oldest forgotten first).
        clock: monotonic seconds (injectable for tests and virtual time).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        max_pinned: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("EndpointPool needs at least one endpoint")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.endpoints = list(endpoints)
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._max_pinned = max_pinned
        self._pinned: OrderedDict[str, Endpoint] = OrderedDict()
        self._failures = {id(e): 0 for e in self.endpoints}
        self._out_until = {id(e): 0.0 for e in self.endpoints}

    async def __aenter__(self) -> EndpointPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.aclose()

    def healthy(self, endpoint: Endpoint) -> bool:
        return self._out_until[id(endpoint)] <= self._clock()

    def endpoint_for(self, affinity: str | None = None) -> Endpoint:
        """The replica for ``affinity`` (default: the current program id), pinning new programs."""
        key = affinity or program_id_var.get()
        pinned = self._pinned.get(key) if key else None
        if pinned is not None and self.healthy(pinned):
            self._pinned.move_to_end(key)  # type: ignore[arg-type]
            return pinned
        candidates = [e for e in self.endpoints if self.healthy(e)]
        if not candidates:
            # Everything is out: try the replica that comes back first rather than fail outright.
            candidates = [min(self.endpoints, key=lambda e: self._out_until[id(e)])]
        load = {id(e): 0 for e in self.endpoints}
        for e in self._pinned.values():
            load[id(e)] += 1
        chosen = min(candidates, key=lambda e: (e.outstanding, load[id(e)]))
        if key:
            self._pinned[key] = chosen
            self._pinned.move_to_end(key)
            while len(self._pinned) > self._max_pinned:
                self._pinned.popitem(last=False)
        return chosen

    def release(self, affinity: str) -> None:
        """Forget a finished program's pinning."""
        self._pinned.pop(affinity, None)

    def record(self, endpoint: Endpoint, error: BaseException | None) -> None:
        """Count a request's outcome towards the replica's health."""
        key = id(endpoint)
        if error is None or not isinstance(error, REPLICA_FAILURES):
            self._failures[key] = 0
            return
        self._failures[key] += 1
        if self._failures[key] >= self.failure_threshold:
            self._out_until[key] = self._clock() + self.cooldown_s
            self._failures[key] = 0
            log.warning(
                "replica %s taken out for %.0fs after repeated failures: %s",
                endpoint.name,
                self.cooldown_s,
                error,
            )

    async def complete(self, prompt: Prompt, *, affinity: str | None = None, **kwargs: Any) -> Generation:
        """:meth:`Endpoint.complete` on the program's replica, moving to another if it fails."""
        return await self._route(affinity, lambda e: e.complete(prompt, **kwargs))

    async def chat(
        self, messages: Sequence[Message], *, affinity: str | None = None, **kwargs: Any
    ) -> Generation:
        """:meth:`Endpoint.chat` on the program's replica, moving to another if it fails."""
        return await self._route(affinity, lambda e: e.chat(messages, **kwargs))

    async def _route(self, affinity: str | None, call: Callable[[Endpoint], Any]) -> Generation:
        tried: set[int] = set()
        while True:
            endpoint = self.endpoint_for(affinity)
            if id(endpoint) in tried:
                endpoint = next(
                    (e for e in self.endpoints if id(e) not in tried and self.healthy(e)), endpoint
                )
                if key := affinity or program_id_var.get():
                    self._pinned[key] = endpoint
            tried.add(id(endpoint))
            try:
                result: Generation = await call(endpoint)
            except EndpointError as exc:
                self.record(endpoint, exc)
                others_left = any(id(e) not in tried and self.healthy(e) for e in self.endpoints)
                if not isinstance(exc, REPLICA_FAILURES) or not others_left:
                    raise
                log.warning(
                    "replica %s failed (%s); moving the request to another replica", endpoint.name, exc
                )
                continue
            self.record(endpoint, None)
            return result
