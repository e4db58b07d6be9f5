"""``dynasor-client bench racing``: racing rounds against planned order, accuracy per dataset."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..benchmarks import OnlineRunError, RacingConfig, racing_table, run_racing_benchmark

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_racing_parser"]


def add_racing_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "racing",
        help="racing rounds (samples read as they finish) against planned order: accuracy per dataset",
        description="See docs/online-benchmark.md, Racing. Each question's self-consistency program alone on "
        "the replay engine's timing model, reading its samples in planned and in finishing order.",
    )
    parser.add_argument("--traces", required=True, nargs="+", help="traces files (one dataset each)")
    parser.add_argument("--json", dest="json_out", required=True, help="write the figures here (JSON)")
    parser.add_argument("--profile", default="llama3-8b-h100-80gb", help="GPU profile name or JSON file")
    parser.add_argument("--split", choices=["train", "test", "all"], default="all", help="questions asked")
    parser.add_argument("--rule", default="default", help="stop rule: default, paper or a calibration JSON")
    parser.add_argument("-n", type=int, default=30, help="samples per program at most")
    parser.add_argument("--lookahead", type=int, default=None, help="racing: samples past each check")
    parser.add_argument("--seeds", type=int, default=5, help="replay seeds (replicates)")
    parser.add_argument("--seed", type=int, default=0, help="the first replay seed")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.set_defaults(func=_racing)


def _racing(args: argparse.Namespace) -> int:
    config = RacingConfig(
        traces=tuple(args.traces), profile=args.profile, split=args.split, n=args.n, rule=args.rule,
        lookahead=args.lookahead, seeds=args.seeds, seed=args.seed, jobs=args.jobs,
    )  # fmt: skip
    try:
        result = run_racing_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except OnlineRunError as exc:
        raise ValueError(f"a benchmark run failed: {exc}") from exc
    from ._bench import finish_command  # _bench adds this subcommand: imported when it runs

    return finish_command(result, racing_table(result), args.json_out)
