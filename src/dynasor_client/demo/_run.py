"""Running the demo: the backend (local model, endpoint or replayed traces), both methods, the command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..algorithms import DEFAULT_SYSTEM, Prompting, self_consistency
from ..certainty import StopRule, cap
from ..endpoints import Endpoint, SamplingParams
from ..program import ProgramResult, as_program
from ..runtime import Runtime

# --------------------------------------------------------------------------------------- running
from ._questions import (
    _REACH_TIMEOUT_S,
    DEFAULT_ENDPOINT_MAX_TOKENS,
    DEFAULT_LOCAL_MAX_TOKENS,
    DEFAULT_N,
    DEFAULT_QUESTIONS,
    LOCAL_PARALLEL,
    DemoQuestion,
    _trace_questions,
    demo_rule,
    describe_rule,
    generate_questions,
)
from ._report import DemoReport, _figures, format_table, write_plot

Session = Callable[[], contextlib.AbstractAsyncContextManager[tuple[Endpoint, "Callable[[], float] | None"]]]


@dataclass
class _Backend:
    """Where the methods run: ``session()`` gives each method its endpoint (and the replay engine's
    modelled clock); the local server and a remote endpoint are shared, the replay server is fresh."""

    name: str
    session: Session
    questions: list[DemoQuestion]
    n: int
    max_tokens: int | None
    window: int | None
    source: str | None = None
    paired: bool = False  # replay: each question's program draws the same sample order in both methods
    # local and endpoint: sample i of each question is drawn with seed + i in both methods, so they
    # share their samples as far as the server is deterministic (batching can change the numerics)
    seed: int | None = None


async def _check_reachable(url: str, api_key: str | None) -> None:
    """Fail fast (one GET /models, no retries) when nothing answers at ``url``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=_REACH_TIMEOUT_S) as client:
            response = await client.get(url.rstrip("/") + "/models", headers=headers)
    except httpx.HTTPError as exc:
        raise ValueError(
            f"cannot reach the endpoint {url}: {exc or type(exc).__name__} "
            "(is the server running? the URL must include /v1)"
        ) from exc
    if response.status_code in (401, 403):
        raise ValueError(
            f"the endpoint {url} refused the API key (HTTP {response.status_code}): "
            "pass --api-key or set OPENAI_API_KEY"
        )


def _shared(endpoint: Endpoint) -> Session:
    @contextlib.asynccontextmanager
    async def session() -> AsyncIterator[tuple[Endpoint, Callable[[], float] | None]]:
        yield endpoint, None

    return session


@contextlib.asynccontextmanager
async def _backend(args: argparse.Namespace, log: Callable[[str], None]) -> AsyncIterator[_Backend]:
    if args.traces is not None:
        questions, n = _trace_questions(args.traces, args.questions, args.seed, args.n)
        try:
            from ..replay import ReplayServer
        except ImportError as exc:  # pragma: no cover - the [server] extra is missing
            raise ValueError(
                f"--traces needs the server extra: pip install 'dynasor-client[server]' ({exc})"
            ) from exc
        demo_questions = [
            DemoQuestion(
                q.id,
                q.question,
                q.gold,
                (
                    {"role": "system", "content": q.system or DEFAULT_SYSTEM},
                    {"role": "user", "content": q.question},
                ),
            )
            for q in questions
        ]

        @contextlib.asynccontextmanager
        async def replay() -> AsyncIterator[tuple[Endpoint, Callable[[], float] | None]]:
            # A fresh server with the same seed for each method: a question's program (named by the
            # request's ``user``) draws the same sample order in both, so they differ only by the rule.
            async with (
                ReplayServer(
                    questions, profile=args.profile, time_scale=args.time_scale, seed=args.seed
                ) as server,
                Endpoint(server.base_url, capabilities=server.capabilities, timeout=600) as endpoint,
            ):
                model = server.driver.model
                yield endpoint, lambda: model.clock

        log(f"Replaying {len(questions)} questions of {args.traces} ({args.profile} timing model)")
        yield _Backend("replay", replay, demo_questions, n, args.max_tokens, None, args.traces, paired=True)
        return
    count = DEFAULT_QUESTIONS if args.questions is None else args.questions
    generated = generate_questions(count, args.seed)
    n = DEFAULT_N if args.n is None else args.n
    if args.endpoint is not None:
        max_tokens = DEFAULT_ENDPOINT_MAX_TOKENS if args.max_tokens is None else args.max_tokens
        await _check_reachable(args.endpoint, args.api_key)
        async with Endpoint(args.endpoint, model=args.model, api_key=args.api_key) as endpoint:
            log(f"Using {await endpoint.model_name()} at {args.endpoint}")
            yield _Backend(
                "endpoint", _shared(endpoint), generated, n, max_tokens, 64, args.endpoint, seed=args.seed
            )
        return
    from ..local import LocalLlamaServer

    max_tokens = DEFAULT_LOCAL_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    parallel = max(LOCAL_PARALLEL, n)
    log("Starting llama.cpp with SmolLM2-135M-Instruct on 127.0.0.1 ...")
    async with (
        LocalLlamaServer(n_parallel=parallel, n_ctx_per_slot=256 + max_tokens) as local,
        Endpoint(local.base_url, timeout=300) as endpoint,
    ):
        log(f"Serving {local.model} at {local.base_url} ({parallel} slots)")
        yield _Backend("local", _shared(endpoint), generated, n, max_tokens, parallel, seed=args.seed)


@dataclass
class _MethodRun:
    results: list[ProgramResult | None]
    wall_s: float
    modelled_s: float | None
    errors: dict[int, BaseException]
    model: str


async def _run_method(
    backend: _Backend, label: str, rule: StopRule, rounds: list[int], progress: bool
) -> _MethodRun:
    programs = []
    for q in backend.questions:
        extra = {"user": f"demo-{q.id}"} if backend.paired else {}
        params = SamplingParams(
            temperature=0.7, max_tokens=backend.max_tokens, seed=backend.seed, extra_body=extra
        )
        programs.append(
            as_program(
                self_consistency,
                q.text,
                n=backend.n,
                rule=rule,
                rounds=rounds,
                params=params,
                prompting=Prompting(messages=q.messages),
            )
        )
    async with backend.session() as (endpoint, clock):
        model = await endpoint.model_name()
        modelled_start = None if clock is None else clock()
        async with Runtime(endpoint, window=backend.window) as runtime:
            batch = await runtime.run_batch(programs, progress=progress, desc=label)
        modelled = None if clock is None or modelled_start is None else clock() - modelled_start
    return _MethodRun(batch.results, batch.elapsed_s, modelled, batch.errors, model)


async def run_demo(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> DemoReport:
    """Both methods on the chosen backend (module docs); ``args`` as ``dynasor-client demo`` parses."""
    started = time.perf_counter()
    async with _backend(args, log) as backend:
        n = backend.n
        rule, rounds = demo_rule(n)
        log(f"{len(backend.questions)} questions, n = {n} samples each; certaindex: {describe_rule(n)}")
        plain_label = f"plain SC (n={n})"
        plain_run = await _run_method(backend, plain_label, cap(n), [n], args.progress)
        if plain_run.errors and len(plain_run.errors) == len(backend.questions):
            first = plain_run.errors[min(plain_run.errors)]
            raise ValueError(f"every question failed; the first error: {type(first).__name__}: {first}")
        ci_run = await _run_method(backend, "certaindex", rule, rounds, args.progress)
    plain_results, ci_results = plain_run.results, ci_run.results
    plain, plain_ok = _figures("plain", plain_label, backend.questions, plain_results, plain_run.wall_s)
    certaindex, ci_ok = _figures("certaindex", "certaindex", backend.questions, ci_results, ci_run.wall_s)
    plain.modelled_s, certaindex.modelled_s = plain_run.modelled_s, ci_run.modelled_s
    errors = [
        f"{method} {backend.questions[i].id}: {type(exc).__name__}: {exc}"
        for method, failures in (("plain", plain_run.errors), ("certaindex", ci_run.errors))
        for i, exc in sorted(failures.items())
    ]
    per_question = []
    for i, q in enumerate(backend.questions):
        row: dict[str, Any] = {"id": q.id, "question": q.text, "gold": q.gold}
        for key, results, ok in (("plain", plain_results, plain_ok), ("certaindex", ci_results, ci_ok)):
            result = results[i]
            row[key] = (
                None
                if result is None
                else {
                    "answer": result.answer,
                    "correct": ok[i],
                    "tokens": result.tokens.generated,
                    "samples": len(result.answers),
                    "stop_reason": result.stop_reason.value,
                    "answers": list(result.answers),
                }
            )
        per_question.append(row)
    return DemoReport(
        backend=backend.name,
        model=plain_run.model,
        n=n,
        max_tokens=backend.max_tokens,
        seed=args.seed,
        rule=rule.to_dict(),
        rule_text=describe_rule(n),
        rounds=rounds,
        plain=plain,
        certaindex=certaindex,
        per_question=per_question,
        source=backend.source,
        elapsed_s=time.perf_counter() - started,
        errors=errors,
    )


# --------------------------------------------------------------------------------------- the command


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo, print the table, write the JSON and the plot. Usage errors raise ValueError."""
    if args.endpoint is None and (args.model is not None or args.api_key is not None):
        raise ValueError("--model and --api-key go with --endpoint")
    if args.questions is not None and args.questions < 1:
        raise ValueError(f"--questions must be >= 1, got {args.questions}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.n is not None:
        demo_rule(args.n)  # validates n before anything starts
    if args.json_out is not None:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run_demo(args, log=lambda text: print(text, flush=True)))
    print()
    print(format_table(report))
    if args.json_out is not None:
        Path(args.json_out).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    if not args.no_plot:
        if write_plot(report, args.plot):
            print(f"plot saved to {args.plot}")
        else:
            print(
                "matplotlib is not installed: no plot (pip install 'dynasor-client[plot]')", file=sys.stderr
            )
    print(f"done in {report.elapsed_s:.0f} s")
    return 0
