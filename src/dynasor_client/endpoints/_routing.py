"""Routing across replicas: which replica serves a request, and how a failed one comes back.

Routing policies are small objects behind one interface, :class:`RoutingPolicy` (as vLLM's request
queues are behind theirs): ``choose(replicas, key)`` picks one of the replicas that are up for a
request whose affinity key is ``key`` (a program's id; see :class:`~._pool.EndpointPool`).

- :class:`LeastOutstanding`: the replica with the fewest requests in flight (ties: the fewest keys
  pinned to it, then the first listed).
- :class:`PrefixAffinity`: a key stays on the replica it was first sent to, so the prompt its
  rounds share stays in that replica's prefix cache; a new key, or one whose replica is down, goes
  where ``fallback`` (default :class:`LeastOutstanding`) sends it, and is pinned there.

:class:`HealthCheck` says how a replica taken out comes back: probed on its health route with
exponential backoff until it answers, and only then given requests again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._exceptions import BadRequest, EndpointError, MalformedResponse

if TYPE_CHECKING:
    from ._endpoint import Endpoint
    from ._types import Message, Prompt

RouteEventKind = Literal["routed", "replica_down", "replica_up"]
#: Characters of a prompt that make its prefix key (requests outside any program).
PREFIX_CHARS = 512


@dataclass(eq=False, slots=True)
class Replica:
    """One replica's routing state (compared by identity)."""

    endpoint: Endpoint
    index: int
    failures: int = 0  # consecutive failed requests
    down: bool = False
    downs: int = 0  # times taken out or failed a probe since it last served a request (backoff exponent)
    retry_at: float = 0.0  # down: when it is probed (or, without probes, tried) again
    pinned: int = 0  # affinity keys pinned to it
    probing: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def outstanding(self) -> int:
        return self.endpoint.outstanding


@dataclass(frozen=True, slots=True)
class RouteEvent:
    """What the pool tells its listeners: ``routed`` (a key placed on a replica: first placement,
    or moved because its replica failed; ``previous`` in ``data``), ``replica_down`` (taken out:
    ``error``, ``retry_in_s``) and ``replica_up`` (back: ``via`` probe or request)."""

    kind: RouteEventKind
    replica: str
    program_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class RoutingPolicy(ABC):
    """Chooses the replica of a request among those that are up."""

    @abstractmethod
    def choose(self, replicas: Sequence[Replica], key: str | None) -> Replica:
        """One of ``replicas`` (never empty) for a request with affinity ``key`` (None: none)."""

    def placed(self, key: str) -> Replica | None:
        """Where ``key`` is pinned (None: nowhere, or the policy does not pin)."""
        return None

    def forget(self, key: str) -> None:
        """``key`` is finished (its program ended): drop whatever was kept for it."""
        return None


class LeastOutstanding(RoutingPolicy):
    """The replica with the fewest requests in flight; ties: fewest keys pinned, then list order."""

    def choose(self, replicas: Sequence[Replica], key: str | None) -> Replica:
        return min(replicas, key=lambda r: (r.outstanding, r.pinned, r.index))


class PrefixAffinity(RoutingPolicy):
    """A key stays on its replica while that one is up (its prefix cache keeps the key's prompt).

    Args:
        fallback: places new keys and keys whose replica is down (default :class:`LeastOutstanding`).
        max_keys: keys remembered (the least recently used are forgotten first).
        max_imbalance: a key moves (through ``fallback``) when its replica has more than this many
            requests in flight beyond the least busy one (SGLang's router: ``balance_abs_threshold``,
            64 too); None: never.
    """

    def __init__(
        self,
        fallback: RoutingPolicy | None = None,
        *,
        max_keys: int = 100_000,
        max_imbalance: int | None = 64,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        if max_imbalance is not None and max_imbalance < 0:
            raise ValueError("max_imbalance must be >= 0 or None")
        self.fallback = fallback or LeastOutstanding()
        self.max_keys, self.max_imbalance = max_keys, max_imbalance
        self._pins: OrderedDict[str, Replica] = OrderedDict()

    def choose(self, replicas: Sequence[Replica], key: str | None) -> Replica:
        if key is None:
            return self.fallback.choose(replicas, None)
        pinned = self._pins.get(key)
        if pinned is not None and pinned in replicas and not self._overloaded(pinned, replicas):
            self._pins.move_to_end(key)
            return pinned
        chosen = self.fallback.choose(replicas, key)
        self.forget(key)
        self._pins[key] = chosen
        chosen.pinned += 1
        while len(self._pins) > self.max_keys:
            _, oldest = self._pins.popitem(last=False)
            oldest.pinned -= 1
        return chosen

    def _overloaded(self, replica: Replica, replicas: Sequence[Replica]) -> bool:
        if self.max_imbalance is None:
            return False
        return replica.outstanding - min(r.outstanding for r in replicas) > self.max_imbalance

    def placed(self, key: str) -> Replica | None:
        return self._pins.get(key)

    def forget(self, key: str) -> None:
        replica = self._pins.pop(key, None)
        if replica is not None:
            replica.pinned -= 1


def prefix_key(prompt: Prompt | None = None, messages: Sequence[Message] | None = None) -> str:
    """The affinity key of a request outside any program: a hash of its prompt's first characters
    (or token ids), so requests that share a prefix go to the replica that has it cached."""
    if messages is not None:
        text = json.dumps([dict(m) for m in messages], sort_keys=True, default=str)[:PREFIX_CHARS]
    elif isinstance(prompt, str):
        text = prompt[:PREFIX_CHARS]
    else:
        text = ",".join(map(str, list(prompt or ())[: PREFIX_CHARS // 4]))
    return "prefix:" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How a replica taken out comes back.

    It is probed ``backoff_s`` after it was taken out, then after twice as long each time a probe
    fails, at most ``max_backoff_s`` apart; the first probe that passes brings it back. A probe is
    ``GET path`` on the server root (llama.cpp, vLLM and SGLang answer ``/health``; a 404 or 405
    there falls back to ``GET /v1/models``, for APIs without one), passed by any 2xx answer within
    ``timeout_s``. The backoff starts again from ``backoff_s`` once the replica has served a request.
    ``path=None``: no probes; once its backoff has passed the replica gets real requests again (the
    first that fails doubles the backoff).
    """

    path: str | None = "/health"
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValueError("health check backoff must satisfy 0 <= backoff_s <= max_backoff_s")
        if not self.timeout_s > 0:
            raise ValueError("health check timeout_s must be > 0")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"health check path must start with '/', got {self.path!r}")

    def delay(self, downs: int) -> float:
        """Seconds until the next probe after ``downs`` failures since the replica last served."""
        return float(min(self.backoff_s * 2.0 ** min(downs, 64), self.max_backoff_s))

    async def probe(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint``'s server answers its health route (or ``/v1/models``) now."""
        assert self.path is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                for path in (self.path, "/v1/models"):
                    try:
                        await endpoint.root_request("GET", path)
                        return True
                    except MalformedResponse:
                        return True  # a 2xx whose body is not JSON (vLLM's /health is empty)
                    except BadRequest as exc:
                        if exc.status not in (404, 405):
                            return False
                return False
        except (EndpointError, TimeoutError):
            return False
