"""The proxy's upstream connections: several small httpcore pools instead of one large one.

httpcore's pool re-examines every one of its connections whenever a request enters or leaves it
(expiry, idleness, and for each idle connection a count of all of them: quadratic in the pool's
size), so one pool holding hundreds of streams spends most of the proxy's CPU there (issue 17,
part 8: 38% of CPU samples at 200 streams). :class:`ShardedTransport` spreads requests round-robin
over ``ceil(max_in_flight / SHARD_SIZE)`` pools, each scanning only its own few connections, and
lets each keep as many idle connections as it holds in flight (with slack), so a closed loop of
requests reuses its connections instead of reconnecting.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import httpx

__all__ = ["SHARD_SIZE", "ShardedTransport", "upstream_transport"]

#: Streams one pool is sized for: its scans stay short (``bench proxy``, docs/proxy-benchmark.md).
SHARD_SIZE = 16

SocketOption = tuple[int, int, int]


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests spread round-robin over ``transports`` (connection pools to the same upstream)."""

    def __init__(self, transports: Sequence[httpx.AsyncBaseTransport]) -> None:
        if not transports:
            raise ValueError("at least one transport")
        self.transports = tuple(transports)
        self._next = itertools.cycle(self.transports)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


def upstream_transport(
    max_in_flight: int, *, socket_options: Sequence[SocketOption] = ()
) -> httpx.AsyncBaseTransport:
    """The transport of the proxy's upstream client for ``max_in_flight`` concurrent requests:
    pools of :data:`SHARD_SIZE` streams, no cap on connections (the runtime's window caps them),
    twice that many kept alive per pool, one TLS context (the default verification) for all."""
    shards = max(1, math.ceil(max_in_flight / SHARD_SIZE))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=2 * SHARD_SIZE)
    tls = httpx.create_ssl_context()  # one for all pools (each would load the CA bundle: ~20 ms)
    pools = [
        httpx.AsyncHTTPTransport(verify=tls, limits=limits, socket_options=list(socket_options))
        for _ in range(shards)
    ]
    return pools[0] if shards == 1 else ShardedTransport(pools)
