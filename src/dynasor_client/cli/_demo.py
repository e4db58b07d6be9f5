"""``dynasor-client demo``: plain self-consistency against certaindex on the embedded model, an
endpoint or recorded traces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..demo import (
    DEFAULT_ENDPOINT_MAX_TOKENS,
    DEFAULT_LOCAL_MAX_TOKENS,
    DEFAULT_N,
    DEFAULT_PLOT,
    DEFAULT_QUESTIONS,
    DEFAULT_TRACE_QUESTIONS,
    demo_command,
)

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_demo_parser"]


def add_demo_parser(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="plain self-consistency vs certaindex on the local model (or --endpoint / --traces)",
        description="Answers generated arithmetic word problems with plain self-consistency (n samples) and "
        "with certaindex (stop when the answers agree, cut when they scatter), and compares accuracy, "
        "tokens and time. Default: the embedded SmolLM2-135M on llama.cpp, a few minutes on 2 cores.",
    )
    where = demo.add_mutually_exclusive_group()
    where.add_argument("--endpoint", default=None, help="an OpenAI-compatible API root including /v1")
    where.add_argument("--traces", default=None, help="replay recorded traces (JSON lines) instead")
    demo.add_argument("--model", default=None, help="with --endpoint: the model (default: the first listed)")
    demo.add_argument(
        "--api-key", default=None, help="with --endpoint: the API key (default: $OPENAI_API_KEY)"
    )
    demo.add_argument(
        "--questions",
        type=int,
        default=None,
        help=f"questions (default {DEFAULT_QUESTIONS}; --traces: a sample of {DEFAULT_TRACE_QUESTIONS})",
    )
    demo.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"samples per question (default {DEFAULT_N}; --traces: as recorded)",
    )
    demo.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"tokens per sample (default {DEFAULT_LOCAL_MAX_TOKENS} local, "
        f"{DEFAULT_ENDPOINT_MAX_TOKENS} --endpoint, none --traces)",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the questions and the samples (or of the replay draws)"
    )
    demo.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    demo.add_argument("--plot", default=DEFAULT_PLOT, help=f"save the plot here (default {DEFAULT_PLOT})")
    demo.add_argument("--no-plot", action="store_true", help="do not plot")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.add_argument(
        "--profile", default="llama3-8b-h100-80gb", help="with --traces: the replay engine's GPU profile"
    )
    demo.add_argument(
        "--time-scale",
        type=float,
        default=0.0,
        help="with --traces: wall seconds per modelled second (default 0: as fast as possible)",
    )
    demo.set_defaults(func=demo_command)
