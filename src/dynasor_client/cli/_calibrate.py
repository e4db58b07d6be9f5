"""``dynasor-client calibrate``: choose a stop rule from labelled traces."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_calibrate_parser"]

SPLITS = ["train", "test", "all"]


def add_calibrate_parser(sub: Subparsers) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="choose the stop rule that minimises tokens at full-budget accuracy - epsilon (from traces)",
        description="Splits are by a hash of the question id (sha256; 30% test), the same in every command.",
    )
    cal.add_argument(
        "--traces", required=True, help="labelled traces (JSON lines, shared/data/traces format)"
    )
    cal.add_argument("--out", required=True, help="where to write the calibration JSON")
    cal.add_argument("--cap", type=int, default=30, help="most samples per question (the full budget)")
    cal.add_argument(
        "--epsilon", type=float, default=0.002, help="accuracy allowed below full budget (fraction)"
    )
    cal.add_argument("--split", choices=SPLITS, default="train", help="questions to calibrate on")
    cal.add_argument("--orders", type=int, default=20, help="random sample orders replayed per question")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--objective", choices=["tokens", "samples", "rounds"], default="tokens")
    cal.add_argument("--max-rounds", type=float, default=None, help="most mean sequential rounds allowed")
    cal.add_argument("--folds", type=int, default=5, help="cross-validation folds (1: judge in-sample)")
    cal.add_argument(
        "--safety",
        type=float,
        default=1.0,
        help="with --confidence 0: standard errors of the accuracy difference a rule must clear the "
        "bound by (0: none)",
    )
    cal.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="level of the bootstrap upper bound (over questions) on the out-of-fold accuracy loss that "
        "must stay within epsilon (0: use --safety instead)",
    )
    cal.add_argument(
        "--evaluate-split", choices=SPLITS, default=None, help="also score the rule on this split (e.g. test)"
    )
    cal.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> None:
    from . import _calibration as _commands

    try:
        result = _commands.calibrate_command(
            traces=args.traces,
            out=args.out,
            cap=args.cap,
            epsilon=args.epsilon,
            split=args.split,
            orders=args.orders,
            seed=args.seed,
            objective=args.objective,
            max_rounds=args.max_rounds,
            folds=args.folds,
            safety=args.safety,
            confidence=args.confidence or None,
            evaluate_split=args.evaluate_split,
        )
    except OSError as exc:  # a missing traces file or unwritable output: a usage error, not a crash
        raise ValueError(str(exc)) from exc
    print(result.summary())
    if result.held_out is not None:
        print(_commands.held_out_summary(result.held_out))
    print(f"wrote {args.out}")
