"""``dynasor-client bench redis``: what a budget shared through Redis costs a proxy request."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_redis_parser"]


def add_redis_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "redis",
        help="latency of a proxy request's Redis reservation and settlement (p50/p99)",
        description="See docs/distributed.md, 'Proxy replicas sharing budgets through Redis'. Reserves "
        "and settles requests of one key as `proxy --redis` does, against --redis or a redis-server "
        "started here.",
    )
    parser.add_argument("--redis", default=None, metavar="URL", help="default: a local redis-server")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 16], help="clients at once (one run each)"
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.set_defaults(func=_redis)


def _redis(args: argparse.Namespace) -> int:
    try:
        from ..proxy import local_redis, redis_latency_table, reservation_latency
    except ImportError as exc:
        raise ValueError(f"bench redis needs redis-py: pip install 'dynasor-client[redis]' ({exc})") from exc
    if args.requests < 1 or min(args.clients) < 1:
        raise ValueError("--requests and --clients must be >= 1")

    def measure(url: str) -> dict[str, Any]:
        run = reservation_latency(url, requests=args.requests, concurrency=tuple(args.clients))
        result: dict[str, Any] = asyncio.run(run)
        return result

    if args.redis is not None:
        result = measure(args.redis)
    else:
        with local_redis() as url:
            result = measure(url)
    from ._bench import finish_command  # _bench adds this subcommand: imported when it runs

    return finish_command(result, redis_latency_table(result), args.json_out)
