"""The ``dynasor-client`` command.

Subcommands: ``demo`` (plain self-consistency vs certaindex on the embedded default model),
``serve-local`` (llama.cpp with SmolLM2 for people and other tools), ``generate`` and
``capabilities`` (against any endpoint),
``record`` (sample a dataset into a traces file, resumable),
``calibrate`` (choose a stop rule from labelled traces) and ``bench certaindex`` (hot-path speed),
``serve-replay`` (recorded traces as an OpenAI-compatible server with GPU-like timing) and
``bench replay`` (how many concurrent streams that server sustains).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ._demo import add_demo_parser, demo_command
from ._exceptions import DynasorError
from .benchmarks._batch import add_batch_parser, batch_command
from .benchmarks._online import add_online_parser, online_command
from .benchmarks._overhead import add_overhead_parser, overhead_command
from .endpoints import Endpoint, SamplingParams
from .local import LocalLlamaServer, serve_forever
from .proxy._cli import add_proxy_parser, proxy_command
from .traces._recorder import add_record_arguments, record_command


def _add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint", required=True, help="API root including /v1, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument("--model", default=None, help="model name (default: the first /v1/models lists)")
    parser.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynasor-client", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    add_demo_parser(sub)

    serve = sub.add_parser("serve-local", help="serve SmolLM2-135M-Instruct with llama.cpp on 127.0.0.1")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: a free port")
    serve.add_argument("--n-parallel", type=int, default=8, help="parallel sequences = largest n accepted")
    serve.add_argument("--n-ctx-per-slot", type=int, default=2048)

    generate = sub.add_parser("generate", help="one request to any OpenAI-compatible endpoint")
    _add_endpoint_args(generate)
    generate.add_argument("prompt")
    generate.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    generate.add_argument("-n", type=int, default=1)
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--seed", type=int, default=None)

    caps = sub.add_parser("capabilities", help="probe an endpoint and print what it supports (JSON)")
    _add_endpoint_args(caps)

    rec = sub.add_parser("record", help="record N samples per dataset question as traces (resumable)")
    _add_endpoint_args(rec)
    add_record_arguments(rec)

    splits = ["train", "test", "all"]
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
    cal.add_argument("--split", choices=splits, default="train", help="questions to calibrate on")
    cal.add_argument("--orders", type=int, default=20, help="random sample orders replayed per question")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--objective", choices=["tokens", "samples", "rounds"], default="tokens")
    cal.add_argument("--max-rounds", type=float, default=None, help="most mean sequential rounds allowed")
    cal.add_argument("--folds", type=int, default=5, help="cross-validation folds (1: judge in-sample)")
    cal.add_argument(
        "--safety",
        type=float,
        default=1.0,
        help="standard errors of the accuracy difference a rule must clear the bound by (0: none)",
    )
    cal.add_argument(
        "--evaluate-split", choices=splits, default=None, help="also score the rule on this split (e.g. test)"
    )

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_ci = bench_sub.add_parser("certaindex", help="speed of clustering answers and evaluating rules")
    bench_ci.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    bench_ci.add_argument("--traces", default=None, help="replay these traces (default: synthetic questions)")
    bench_ci.add_argument("--questions", type=int, default=1000)
    bench_ci.add_argument("--orders", type=int, default=20)
    _add_replay_parsers(sub, bench_sub)
    add_batch_parser(bench_sub)
    add_online_parser(bench_sub)
    add_overhead_parser(bench_sub)
    add_proxy_parser(sub)
    return parser


def _add_replay_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: Any) -> None:
    """``serve-replay`` and ``bench replay`` (the replay server: see ``dynasor_client.replay``)."""
    replay = sub.add_parser(
        "serve-replay",
        help="answer OpenAI-compatible requests from recorded traces, timed like a GPU",
        description="Needs the [server] extra. The rules (matching, draws, probes, tokens) are documented "
        "in dynasor_client.replay.",
    )
    replay.add_argument("--traces", required=True, help="traces file (JSON lines, shared/data/traces format)")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=None, help="default: a free port")
    replay.add_argument("--profile", default="llama3-8b-h100-80gb", help="GPU profile name or JSON file")
    replay.add_argument("--time-scale", type=float, default=1.0, help="wall s per modelled s (0: no waiting)")
    replay.add_argument("--seed", type=int, default=0, help="seed of the per-program sample draws")
    replay.add_argument("--logprobs-shape", choices=["auto", "chat", "legacy"], default="auto")
    replay.add_argument("--probe-fallback", choices=["explicit", "math", "none"], default="explicit")
    replay.add_argument("--flush-interval", type=float, default=0.05, help="least seconds between SSE events")
    bench_replay = bench_sub.add_parser(
        "replay", help="concurrent streams and tokens/s the replay server sustains"
    )
    bench_replay.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    bench_replay.add_argument("--streams", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    bench_replay.add_argument("--traces", default=None, help="replay these traces (default: synthetic)")
    bench_replay.add_argument(
        "--profile", default="llama3-8b-h100-80gb", help="GPU profile of the real-time run"
    )
    bench_replay.add_argument("--window", type=float, default=6.0, help="seconds measured per run")
    bench_replay.add_argument("--no-realtime", action="store_true", help="measure the ceiling only")


def _serve_replay(args: argparse.Namespace) -> None:
    try:
        from .replay._server import serve_replay
    except ImportError as exc:
        raise ValueError(
            f"serve-replay needs the server extra: pip install 'dynasor-client[server]' ({exc})"
        ) from exc
    try:
        serve_replay(
            args.traces,
            host=args.host,
            port=args.port,
            profile=args.profile,
            time_scale=args.time_scale,
            seed=args.seed,
            logprobs_shape=args.logprobs_shape,
            probe_fallback=args.probe_fallback,
            flush_interval_s=args.flush_interval,
        )
    except OSError as exc:  # a missing traces file: a usage error, not a crash
        raise ValueError(str(exc)) from exc


def _bench_replay(args: argparse.Namespace) -> None:
    from .benchmarks._replay import main_bench

    try:
        main_bench(
            args.json_out, tuple(args.streams), args.traces, args.profile, args.window, not args.no_realtime
        )
    except OSError as exc:
        raise ValueError(str(exc)) from exc


async def _generate(args: argparse.Namespace) -> None:
    async with Endpoint(args.endpoint, model=args.model, api_key=args.api_key) as endpoint:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
        if args.chat:
            result = await endpoint.chat([{"role": "user", "content": args.prompt}], n=args.n, params=params)
        else:
            result = await endpoint.complete(args.prompt, n=args.n, params=params)
        for choice in result.choices:
            print(f"--- choice {choice.index} ({choice.num_tokens} tokens, {choice.finish_reason})")
            if choice.reasoning:
                print(f"[reasoning] {choice.reasoning}")
            print(choice.text)
        ttft = f", first token after {result.ttft_s:.2f}s" if result.ttft_s is not None else ""
        print(
            f"--- usage {result.usage.prompt_tokens} prompt + {result.usage.completion_tokens} "
            f"completion tokens in {result.latency_s:.2f}s{ttft}"
        )


def _calibrate(args: argparse.Namespace) -> None:
    from .calibration import _commands

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
            evaluate_split=args.evaluate_split,
        )
    except OSError as exc:  # a missing traces file or unwritable output: a usage error, not a crash
        raise ValueError(str(exc)) from exc
    print(result.summary())
    if result.held_out is not None:
        print(_commands.held_out_summary(result.held_out))
    print(f"wrote {args.out}")


def _bench(args: argparse.Namespace) -> None:
    from .calibration import _commands

    try:
        figures = _commands.bench_command(
            json_out=args.json_out, traces=args.traces, questions=args.questions, orders=args.orders
        )
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    print(_commands.bench_summary(figures))


async def _capabilities(args: argparse.Namespace) -> None:
    async with Endpoint(args.endpoint, model=args.model, api_key=args.api_key) as endpoint:
        caps = await endpoint.capabilities()
        print(json.dumps({"model": await endpoint.model_name(), **dataclasses.asdict(caps)}, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve-local":
            serve_forever(
                LocalLlamaServer(
                    host=args.host,
                    port=args.port,
                    n_parallel=args.n_parallel,
                    n_ctx_per_slot=args.n_ctx_per_slot,
                )
            )
        elif args.command == "demo":
            return demo_command(args)
        elif args.command == "generate":
            asyncio.run(_generate(args))
        elif args.command == "capabilities":
            asyncio.run(_capabilities(args))
        elif args.command == "record":
            return asyncio.run(record_command(args))
        elif args.command == "calibrate":
            _calibrate(args)
        elif args.command == "serve-replay":
            _serve_replay(args)
        elif args.command == "proxy":
            return proxy_command(args)
        elif args.command == "bench" and args.bench == "batch":
            return batch_command(args)
        elif args.command == "bench" and args.bench == "online":
            return online_command(args)
        elif args.command == "bench" and args.bench == "overhead":
            return overhead_command(args)
        elif args.command == "bench" and args.bench == "replay":
            _bench_replay(args)
        elif args.command == "bench":
            _bench(args)
    except (DynasorError, ValueError) as exc:
        print(f"dynasor-client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
