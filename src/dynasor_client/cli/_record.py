"""``dynasor-client record``: sample a dataset into a traces file through any endpoint (resumable)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from ..endpoints import Endpoint
from ..traces import DEFAULT_SYSTEM_PROMPT, RecordOptions, load_dataset, record
from ._common import add_endpoint_args

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_record_parser"]


def add_record_parser(sub: Subparsers) -> None:
    rec = sub.add_parser("record", help="record N samples per dataset question as traces (resumable)")
    add_endpoint_args(rec)
    _add_record_arguments(rec)
    rec.set_defaults(func=lambda args: asyncio.run(_record(args)))


def _add_record_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RecordOptions()
    parser.add_argument(
        "--dataset", required=True, help="JSON lines: gsm8k, math500, aime24, amc23, svamp, asdiv"
    )
    parser.add_argument("--out", required=True, help="traces file to append to (resumed if it exists)")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="samples per question")
    parser.add_argument("--limit", type=int, default=None, help="record only the first K questions")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="run seed (per-question seeds derive from it)"
    )
    parser.add_argument("--no-logprobs", action="store_true", help="do not record token logprobs")
    parser.add_argument(
        "--top-logprobs", type=int, default=0, metavar="K", help="also record the top K per token"
    )
    parser.add_argument(
        "--logprob-decimals",
        type=int,
        default=None,
        metavar="D",
        help="round recorded logprobs to D decimals (smaller files; default: as sent)",
    )
    parser.add_argument(
        "--probe-every", type=int, default=None, metavar="T", help="probe the answer every T tokens"
    )
    parser.add_argument(
        "--continuation",
        choices=["auto", "tokens", "text", "prefill"],
        default="auto",
        help="how probed samples continue chunk by chunk (auto: the most exact the server supports)",
    )
    parser.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help='system prompt ("" for none)')
    parser.add_argument("--completions", action="store_true", help="send a raw completions prompt, not chat")
    parser.add_argument(
        "--prompt-template", default=None, help="completions prompt with {question} (and {system})"
    )
    parser.add_argument(
        "--task", default=defaults.task, help="answer extractor: math, gsm8k, multiple_choice, code"
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="questions in flight")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _record(args: argparse.Namespace) -> int:
    """Run ``dynasor-client record``: 0 when every question is recorded, 1 when some were skipped."""
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    items = load_dataset(args.dataset)
    if args.limit is not None:
        items = items[: args.limit]
    options = RecordOptions(
        samples=args.samples,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        logprobs=not args.no_logprobs,
        top_logprobs=args.top_logprobs,
        logprob_decimals=args.logprob_decimals,
        probe_every=args.probe_every,
        continuation=args.continuation,
        system=args.system or None,
        completions=args.completions,
        prompt_template=args.prompt_template,
        task=args.task,
        concurrency=args.concurrency,
        progress=not args.no_progress,
    )
    async with Endpoint(
        args.endpoint, model=args.model, api_key=args.api_key, timeout=args.timeout
    ) as endpoint:
        try:
            summary = await record(endpoint, items, args.out, options)
        except asyncio.CancelledError:
            print(
                f"interrupted: the questions recorded so far are in {args.out}; "
                "run the same command to resume",
                file=sys.stderr,
            )
            raise
    print(summary.describe())
    return 1 if summary.skipped else 0
