"""``dynasor-client bench``: the benchmarks (certaindex, replay, batch, peers, online, overhead, proxy, cot,
ray).

Each subcommand runs one benchmark of :mod:`dynasor_client.benchmarks` (``bench certaindex``: of
calibration), prints its table and writes its JSON (and plot).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..benchmarks import (
    ALGORITHMS,
    ANSWER_SOURCES,
    OnlineRunError,
    RealOnlineConfig,
    batch_table,
    bench_replay,
    bench_replay_summary,
    online_config,
    online_table,
    overhead_table,
    peers_table,
    plot_batch,
    plot_online,
    proxy_table,
    real_online_table,
    run_batch_benchmark,
    run_online_benchmark,
    run_overhead_benchmark,
    run_peers_benchmark,
    run_proxy_benchmark,
    run_real_online_benchmark,
    write_json,
)
from ._bench_cot import add_cot_parser
from ._bench_racing import add_racing_parser
from ._bench_ray import add_ray_parser
from ._bench_redis import add_redis_parser

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_bench_parser", "finish_command"]


def add_bench_parser(sub: Subparsers) -> None:
    """``bench`` and its subcommands."""
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    _add_certaindex_parser(bench_sub)
    _add_replay_parser(bench_sub)
    _add_batch_parser(bench_sub)
    _add_peers_parser(bench_sub)
    _add_online_parser(bench_sub)
    add_racing_parser(bench_sub)
    add_cot_parser(bench_sub)
    add_ray_parser(bench_sub)
    _add_overhead_parser(bench_sub)
    _add_proxy_parser(bench_sub)
    add_redis_parser(bench_sub)


def finish_command(
    result: Mapping[str, Any],
    table: str,
    json_out: str | Path | None,
    *,
    plot: Callable[[Mapping[str, Any], str | Path], None] | None = None,
    plot_path: str | Path | None = None,
) -> int:
    """The end of a ``bench`` subcommand: print ``table``, write ``result`` to ``json_out`` (when
    given), draw ``plot(result, plot_path)`` (when both are given); 0. A JSON file that cannot be
    written, or a plot that fails, raises ValueError (the CLI reports it and exits non-zero)."""
    print(table)
    if json_out:
        try:
            write_json(json_out, result)
        except OSError as exc:
            raise ValueError(f"cannot write {json_out}: {exc}") from exc
        print(f"wrote {json_out}")
    if plot is not None and plot_path:
        try:
            plot(result, plot_path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"plot failed ({exc}); the figures were written to {json_out}") from exc
        print(f"wrote {plot_path}")
    return 0


# -- bench certaindex ------------------------------------------------------------------------------------


def _add_certaindex_parser(bench_sub: Subparsers) -> None:
    bench_ci = bench_sub.add_parser("certaindex", help="speed of clustering answers and evaluating rules")
    bench_ci.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    bench_ci.add_argument("--traces", default=None, help="replay these traces (default: synthetic questions)")
    bench_ci.add_argument("--questions", type=int, default=1000)
    bench_ci.add_argument("--orders", type=int, default=20)
    bench_ci.set_defaults(func=_certaindex)


def _certaindex(args: argparse.Namespace) -> None:
    from . import _calibration as _commands

    try:
        figures = _commands.bench_command(
            json_out=args.json_out, traces=args.traces, questions=args.questions, orders=args.orders
        )
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    print(_commands.bench_summary(figures))


# -- bench replay ----------------------------------------------------------------------------------------


def _add_replay_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser("replay", help="concurrent streams and tokens/s the replay server sustains")
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument("--streams", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--traces", default=None, help="replay these traces (default: synthetic)")
    parser.add_argument("--profile", default="llama3-8b-h100-80gb", help="GPU profile of the real-time run")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--no-realtime", action="store_true", help="measure the ceiling only")
    parser.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> None:
    try:
        figures = bench_replay(
            streams=tuple(args.streams),
            traces=args.traces,
            profile=args.profile,
            window_s=args.window,
            realtime=not args.no_realtime,
        )
        print(bench_replay_summary(figures))
        if args.json_out is not None:
            Path(args.json_out).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
            print(f"wrote {args.json_out}")
    except OSError as exc:
        raise ValueError(str(exc)) from exc


# -- bench batch -----------------------------------------------------------------------------------------


def _add_batch_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "batch",
        help="token-to-accuracy of every stopping method, replayed over recorded traces",
        description="See docs/batch-benchmark.md for the methods and the JSON. Replays recorded traces in "
        "many sample orders through the library's stop rules.",
    )
    parser.add_argument("--traces", required=True, help="traces file (JSON lines, shared/data/traces format)")
    parser.add_argument("--algorithm", required=True, choices=ALGORITHMS, help="sc: self-consistency")
    parser.add_argument("--cap", type=int, default=30, help="most samples per question (the full budget)")
    parser.add_argument("--seeds", type=int, default=20, help="random sample orders per question")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample orders")
    parser.add_argument(
        "--split", choices=["train", "test", "all"], default="test", help="the questions evaluated"
    )
    parser.add_argument("--calibration", default=None, help="the rule of 'ours' (default: default_rule())")
    parser.add_argument("--json", dest="json_out", required=True, help="write the figures here (JSON)")
    parser.add_argument("--plot", default=None, help="draw token-to-accuracy here (PNG; needs matplotlib)")
    parser.add_argument(
        "--answers",
        choices=ANSWER_SOURCES,
        default="recorded",
        help="vote with the recorded answers, or with those the library extracts from each text",
    )
    parser.add_argument(
        "--unseen",
        action="store_true",
        help="also calibrate afresh and report the loss on questions the calibration never saw "
        "(train->test, k-fold, cross-dataset), with intervals over questions",
    )
    parser.add_argument("--folds", type=int, default=5, help="with --unseen: k of the k-fold (0: skip)")
    parser.add_argument(
        "--cross",
        action="append",
        default=[],
        metavar="TRACES",
        help="with --unseen: another traces file; every ordered pair of files is fitted on one, judged on "
        "the other (at the common cap); repeat for more files",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="with --unseen: level of the bootstrap upper bound on the loss the calibration must keep "
        "within epsilon (0: the normal margin of --safety standard errors instead)",
    )
    parser.add_argument(
        "--safety",
        type=float,
        default=1.0,
        help="with --unseen --confidence 0: standard errors of the accuracy difference a rule must clear the "
        "bound by",
    )
    parser.add_argument("--quick", action="store_true", help="fewer orders and questions (a smoke run)")
    parser.set_defaults(func=_batch)


def _batch(args: argparse.Namespace) -> int:
    result = run_batch_benchmark(
        args.traces,
        algorithm=args.algorithm,
        cap=args.cap,
        seeds=args.seeds,
        split=args.split,
        calibration=args.calibration,
        quick=args.quick,
        seed=args.seed,
        answers=args.answers,
        unseen=args.unseen,
        folds=args.folds,
        cross=args.cross,
        confidence=args.confidence or None,
        safety=args.safety,
    )
    return finish_command(result, batch_table(result), args.json_out, plot=plot_batch, plot_path=args.plot)


# -- bench peers -----------------------------------------------------------------------------------------


def _add_peers_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "peers",
        help="self-consistency against its-hub's adaptive self-consistency, over HTTP (replay server)",
        description="See docs/peers.md. Needs the [peers] and [server] extras. Full budget, its-hub's "
        "AdaptiveSelfConsistency through its own API, and self_consistency with default_rule() and "
        'rule="adaptive", against a replay server on loopback, for several seeds.',
    )
    parser.add_argument("--traces", required=True, help="traces file (JSON lines, shared/data/traces format)")
    parser.add_argument("--questions", type=int, default=100, help="the first N questions of the split")
    parser.add_argument(
        "--split", choices=["train", "test", "all"], default="test", help="test: unseen by default_rule()"
    )
    parser.add_argument("--seeds", type=int, default=3, help="replay-server seeds (sample sequences)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--cap", type=int, default=30, help="most samples per question (the full budget)")
    parser.add_argument("--concurrency", type=int, default=16, help="programs in flight at once")
    parser.add_argument("--outcomes", action="store_true", help="keep every question's outcome in the JSON")
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument("--quick", action="store_true", help="6 questions, 2 seeds (a smoke run)")
    parser.set_defaults(func=_peers)


def _peers(args: argparse.Namespace) -> int:
    result = run_peers_benchmark(
        args.traces,
        questions=args.questions,
        seeds=args.seeds,
        seed=args.seed,
        cap=args.cap,
        split=args.split,
        concurrency=args.concurrency,
        quick=args.quick,
        keep_outcomes=args.outcomes,
    )
    return finish_command(result, peers_table(result), args.json_out)


# -- bench online ----------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _add_online_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "online",
        help="deadline attainment of programs arriving online: naive, gang, certaindex, SRW, deadlines",
        description="See docs/online-benchmark.md for the methods and the JSON. Poisson arrivals of "
        "self-consistency programs through the real runtime against the replay engine's timing model on a "
        "virtual clock.",
    )
    parser.add_argument(
        "--traces",
        default=None,
        help="traces file (JSON lines, shared/data/traces format); not with a real server",
    )
    parser.add_argument("--profile", default="llama3-8b-h100-80gb", help="GPU profile name or JSON file")
    parser.add_argument("--json", dest="json_out", required=True, help="write the figures here (JSON)")
    parser.add_argument("--plot", default=None, help="draw attainment curves here (PNG; needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="few programs, rates and SLO scales (smoke run)")
    parser.add_argument("--split", choices=["train", "test", "all"], default="test", help="questions asked")
    parser.add_argument(
        "--rule", default="default", help="certaindex stop rule: default, paper or a calibration JSON file"
    )
    parser.add_argument(
        "-n",
        type=int,
        default=None,
        help="samples per program at most (full budget; default 30, 8 on a real server)",
    )
    parser.add_argument("--window", type=int, default=None, help="sequences in flight (default: max_batch)")
    parser.add_argument("--duration", type=float, default=None, help="modelled seconds of arrivals per run")
    parser.add_argument("--slo-scale", type=float, default=3.0, help="SLO scale of the rate sweep")
    parser.add_argument(
        "--ref-rate", type=float, default=0.75, help="rate of the SLO sweep, as a multiple of the capacity"
    )
    parser.add_argument("--rates", type=_floats, default=None, help="rates as multiples of the capacity")
    parser.add_argument("--slo-scales", type=_floats, default=None, help="SLO scales of the SLO sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals and question choices")
    parser.add_argument("--replay-seed", type=int, default=0, help="seed of the replay server's draws")
    parser.add_argument(
        "--seeds", type=int, default=1,
        help="replicates: repeat everything with seeds +1, +2, ... and report means with 95%% intervals",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: the available CPUs, at most 2)"
    )
    _add_online_real_arguments(parser)
    parser.set_defaults(func=_online)


def _add_online_real_arguments(parser: argparse.ArgumentParser) -> None:
    """The real-server mode (docs/online-benchmark.md, *On a real server*): the same comparison on a
    live server, beside the replay engine's prediction on a profile fitted to it."""
    real = parser.add_argument_group(
        "on a real server (--local or --endpoint; --rates, --slo-scales, --seeds, --jobs, --profile, "
        "--split and --plot do not apply)"
    )
    where = real.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the embedded llama.cpp server with SmolLM2-135M")
    where.add_argument("--endpoint", default=None, help="an OpenAI-compatible base URL (vLLM, SGLang, ...)")
    real.add_argument("--model", default=None, help="model name at --endpoint (default: the server's first)")
    real.add_argument("--api-key", default=None, help="API key for --endpoint")
    real.add_argument(
        "--questions", default=None, help="dataset file asked (JSON lines, e.g. svamp/test.jsonl)"
    )
    real.add_argument("--question-count", type=int, default=8, help="questions drawn from the dataset")
    real.add_argument("--programs", type=int, default=20, help="programs arriving (Poisson)")
    real.add_argument("--max-tokens", type=int, default=128, help="tokens per sample at most")
    real.add_argument(
        "--slots", type=int, default=8, help="the embedded server's slots; for --endpoint, its batch size"
    )


def _online(args: argparse.Namespace) -> int:
    if args.local or args.endpoint is not None:
        return _online_real(args)
    if args.traces is None:
        raise ValueError("bench online needs --traces (the timing model), or --local / --endpoint URL")
    config = online_config(
        args.traces,
        quick=bool(args.quick),
        duration_s=args.duration,
        rate_multiples=args.rates,
        slo_scales=args.slo_scales,
        jobs=args.jobs,
        profile=args.profile,
        split=args.split,
        n=30 if args.n is None else args.n,
        rule=args.rule,
        window=args.window,
        slo_scale=args.slo_scale,
        ref_rate_x=args.ref_rate,
        seed=args.seed,
        replay_seed=args.replay_seed,
        seeds=args.seeds,
    )
    try:
        result = run_online_benchmark(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except OnlineRunError as exc:
        raise ValueError(f"a benchmark run failed: {exc}") from exc
    return finish_command(result, online_table(result), args.json_out, plot=plot_online, plot_path=args.plot)


def _online_real(args: argparse.Namespace) -> int:
    if args.questions is None:
        raise ValueError("a real-server run needs --questions (a dataset file, e.g. svamp/test.jsonl)")
    config = RealOnlineConfig(
        args.questions, endpoint=args.endpoint, model=args.model, api_key=args.api_key,
        count=args.question_count, programs=args.programs, n=8 if args.n is None else args.n,
        max_tokens=args.max_tokens, rule=args.rule, rate_x=args.ref_rate, slo_scale=args.slo_scale,
        seed=args.seed, slots=args.slots, window=args.window,
    )  # fmt: skip
    try:
        result = run_real_online_benchmark(
            config, progress=lambda line: print(line, file=sys.stderr, flush=True)
        )
    except OnlineRunError as exc:
        raise ValueError(f"a benchmark run failed: {exc}") from exc
    return finish_command(result, real_online_table(result), args.json_out)


# -- bench overhead --------------------------------------------------------------------------------------


def _add_overhead_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "overhead",
        help="client CPU of the runtime vs a plain AsyncOpenAI loop, scheduler decision time, memory",
        description="See docs/overhead-benchmark.md for what is measured and the JSON.",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument("--programs", type=int, default=10_000, help="programs queued / waiting (2 and 3)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per non-streaming timed run")
    parser.add_argument("--stream-requests", type=int, default=128, help="requests per streaming timed run")
    parser.add_argument("--requests-per-program", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (the window)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per response")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each mode (interleaved)")
    parser.add_argument("--decisions", type=int, default=20_000, help="scheduling decisions timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, one repeat")
    parser.set_defaults(func=_overhead)


def _overhead(args: argparse.Namespace) -> int:
    counts = ("programs", "requests", "stream_requests", "requests_per_program", "concurrency", "max_tokens",
              "repeats", "decisions")  # fmt: skip
    for name in counts:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        result = run_overhead_benchmark(**{name: getattr(args, name) for name in counts},
                                        seed=args.seed, quick=args.quick)  # fmt: skip
    except RuntimeError as exc:  # the replay server did not start
        raise ValueError(str(exc)) from exc
    return finish_command(result, overhead_table(result), args.json_out)


# -- bench proxy -----------------------------------------------------------------------------------------


def _add_proxy_parser(bench_sub: Subparsers) -> None:
    parser = bench_sub.add_parser(
        "proxy",
        help="pass-through streaming through the proxy vs direct: requests/s, added latency, CPU, RSS",
        description="See docs/proxy-benchmark.md for what is measured and the JSON. The replay server "
        "(time scale 0), the proxy and the load generator on loopback.",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures here (JSON)")
    parser.add_argument(
        "--streams", type=int, nargs="+", default=[1, 50, 200, 500], help="concurrent streams of each run"
    )
    parser.add_argument("--window", type=float, default=3.0, help="seconds measured per window")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved direct/proxy windows per N")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens (= SSE events) per response")
    parser.add_argument("--aborts", type=int, default=1000, help="streams dropped mid-way (the RSS check)")
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="the proxy's window (default: the most streams)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds: N = 1 and 8")
    parser.set_defaults(func=_proxy)


def _proxy(args: argparse.Namespace) -> int:
    if args.max_in_flight is not None and args.max_in_flight < 1:
        raise ValueError("--max-in-flight must be >= 1")
    try:
        result = run_proxy_benchmark(
            streams=tuple(args.streams),
            window_s=args.window,
            warmup_s=args.warmup,
            repeats=args.repeats,
            max_tokens=args.max_tokens,
            aborts=args.aborts,
            max_in_flight=args.max_in_flight,
            quick=args.quick,
        )
    except RuntimeError as exc:  # a server did not start
        raise ValueError(str(exc)) from exc
    return finish_command(result, proxy_table(result), args.json_out)
