"""``dynasor-client bench cot``: full chain of thought against the early-stopping methods on one
server (``docs/cot-benchmark.md``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..benchmarks import COT_METHODS, CotConfig, cot_table, run_cot_benchmark

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_cot_parser"]


def add_cot_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "cot",
        help="full chain of thought vs Dynasor-CoT, DeepConf online, DEER: accuracy, tokens, requests, time",
        description="See docs/cot-benchmark.md. The same questions and sampling seeds for every method, "
        "one program at a time (or --concurrency), against --endpoint URL, the embedded llama.cpp model "
        "(--local, the default) or recorded traces through the replay engine (--traces).",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="questions (JSON lines, e.g. gsm8k/test.jsonl; default: the --traces file)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the embedded llama.cpp server (the default)")
    where.add_argument("--endpoint", default=None, help="an OpenAI-compatible base URL (vLLM, SGLang, ...)")
    where.add_argument("--traces", default=None, help="serve this traces file with the replay engine")
    parser.add_argument(
        "--model", default=None, help="model name at --endpoint (default: the server's first)"
    )
    parser.add_argument("--api-key", default=None, help="API key for --endpoint")
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument("--questions", type=int, default=30, help="the first N questions of the dataset")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds per question")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--max-tokens", type=int, default=384, help="tokens of one chain of thought at most")
    parser.add_argument(
        "--methods", nargs="+", choices=COT_METHODS, default=None,
        help="methods compared (default: every one this version offers)",
    )  # fmt: skip
    parser.add_argument(
        "--reasoning", choices=("auto", "think", "plain"), default="auto",
        help="think: the model reasons in <think> (DeepSeek-R1-Distill, Qwen3): the instruction goes in the "
        "user turn, no system prompt; plain: the default system prompt; auto: from the model's name or "
        "chat template",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--chunk-tokens", type=int, default=32, help="Dynasor-CoT: tokens between probes")
    parser.add_argument("--window", type=int, default=3, help="Dynasor-CoT: probes that must agree")
    parser.add_argument("--deer-threshold", type=float, default=0.95, help="DEER: trial-answer confidence")
    parser.add_argument("--deepconf-traces", type=int, default=8, help="DeepConf online: traces at most")
    parser.add_argument("--deepconf-warmup", type=int, default=4, help="DeepConf online: warm-up traces")
    parser.add_argument(
        "--deepconf-group", type=int, default=None,
        help="DeepConf online: sliding window in tokens (default: max-tokens / 8 within [16, 2048])",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=1, help="programs in flight at once")
    parser.add_argument("--slots", type=int, default=4, help="the embedded server's parallel sequences")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per HTTP request at most")
    parser.add_argument("--time-scale", type=float, default=1.0, help="--traces: the replay's pace")
    parser.add_argument("--log-outcomes", default=None, help="append each outcome (a JSON line) as it ends")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 questions, 1 seed, 32 tokens, 4 programs at once (a smoke run)",
    )
    parser.set_defaults(func=_cot)


def _cot(args: argparse.Namespace) -> int:
    if args.dataset is None and args.traces is None:
        raise ValueError("bench cot needs --dataset (or --traces, whose questions are then asked)")
    config = CotConfig(
        args.dataset or args.traces, endpoint=args.endpoint, model=args.model, api_key=args.api_key,
        traces=args.traces,
        questions=args.questions, seeds=args.seeds, seed=args.seed, max_tokens=args.max_tokens,
        methods=None if args.methods is None else tuple(args.methods), reasoning=args.reasoning,
        temperature=args.temperature, top_p=args.top_p, chunk_tokens=args.chunk_tokens, window=args.window,
        deer_threshold=args.deer_threshold, deepconf_traces=args.deepconf_traces,
        deepconf_warmup=args.deepconf_warmup, deepconf_group=args.deepconf_group,
        concurrency=args.concurrency, slots=args.slots,
        timeout_s=args.timeout, time_scale=args.time_scale, outcomes_log=args.log_outcomes, quick=args.quick,
    )  # fmt: skip
    result = run_cot_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    from ._bench import finish_command  # _bench adds this subcommand: imported when it runs

    return finish_command(result, cot_table(result), args.json_out)
