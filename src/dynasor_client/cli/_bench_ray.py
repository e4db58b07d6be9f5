"""``dynasor-client bench ray``: batch throughput over 1 and 2 Ray workers, and the leases' cost."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_ray_parser"]


def add_ray_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "ray",
        help="batch throughput over Ray workers against the replay engine, and lease messages per program",
        description="See docs/distributed.md (Ray). Needs the [ray] extra. The replay server in a child "
        "process, a local Ray cluster, the same batch in one process and over each number of workers.",
    )
    parser.add_argument("--traces", required=True, help="traces file (JSON lines) the replay server serves")
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument("--programs", type=int, default=200, help="self-consistency programs per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray workers of each run")
    parser.add_argument("--lease", type=int, default=32768, help="lease size (tokens) of the worker runs")
    parser.add_argument(
        "--leases", type=int, nargs="+", default=[4096, 32768, 262144], help="lease sizes at the most workers"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (interleaved)")
    parser.add_argument("--time-scale", type=float, default=0.0, help="the replay server's (0: no waiting)")
    parser.set_defaults(func=_ray)


def _ray(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("bench ray needs Ray: pip install 'dynasor-client[ray]'") from None
    from ..benchmarks import ray_table, run_ray_benchmark
    from ._bench import finish_command  # _bench adds this subcommand: imported when it runs

    try:
        result = run_ray_benchmark(
            args.traces, programs=args.programs, workers=tuple(args.workers), leases=tuple(args.leases),
            lease=args.lease, repeats=args.repeats, time_scale=args.time_scale,
        )  # fmt: skip
    except RuntimeError as exc:  # the replay server did not start
        raise ValueError(str(exc)) from exc
    return finish_command(result, ray_table(result), args.json_out)
