"""``dynasor-client bench peers``: self-consistency against a peer library, side by side over HTTP.

On N recorded questions the calibration did not see, for several seeds, four methods run against
a replay server started on loopback (``ReplayServer``, unthrottled): the full budget, its-hub's
adaptive self-consistency driven through its own API (``AdaptiveSelfConsistency.ainfer`` with its
``OpenAICompatibleLanguageModel`` on the server's ``/v1``), and this project's
``self_consistency`` with ``default_rule()`` and with ``rule="adaptive"``. Each (seed, method)
gets a fresh server of that seed and every question one program id, so all four methods read the
same sample sequence of a question (paired, as in ``bench batch``). Figures and JSON:
``docs/peers.md``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import DynasorError
from ..traces import Split, TraceQuestion, file_sha256, load_traces, select_split
from ._common import format_table, run_metadata
from ._online_stats import interval95, mean
from ._peer_rules import ITS_HUB_THRESHOLD

if TYPE_CHECKING:
    from ..certainty import StopRule
    from ..replay import ReplayServer

__all__ = ["PEER_METHODS", "PeersRunError", "peers_table", "run_peers_benchmark"]

#: the methods, in the order they run and print
PEER_METHODS = ("full", "its-hub-adaptive", "ours", "adaptive")
QUICK_QUESTIONS, QUICK_SEEDS = 6, 2
TEMPERATURE = 0.7  #: what self_consistency samples at (the replay server ignores it unless it is 0)
PROFILE = "llama3-8b-h100-80gb"


class PeersRunError(DynasorError, RuntimeError):
    """A program of the benchmark failed (the server refused a request, a client raised): never hidden."""


@dataclass(frozen=True, slots=True)
class QuestionOutcome:
    """One program: what it generated and whether its answer was right."""

    question: str
    tokens: int
    samples: int
    answer: str | None
    correct: bool


def _correct(gold: str, answer: str | None) -> bool:
    from ..certainty import cluster_answers

    return answer is not None and len(set(cluster_answers([gold, answer]))) == 1


# -- the methods -------------------------------------------------------------------------------------------


def _its_hub_projection() -> Callable[[str], Hashable]:
    """its-hub's ``consistency_space_projection_func`` for one question: the text's answer class as
    the library reads it (its math extractor, then its answer clustering), so both vote on the same
    classes. A text without an answer is a class of its own at every call (its-hub would otherwise
    count all unparsable texts as one answer that can win)."""
    from ..certainty import AnswerClusters, get_extractor

    extract, clusters = get_extractor("math"), AnswerClusters()
    labels: dict[str, int] = {}

    def project(text: str) -> Hashable:
        answer = extract(text)
        if answer is None:
            return object()
        if answer not in labels:
            labels[answer] = clusters.add(answer)
        return labels[answer]

    return project


async def _its_hub_program(server: ReplayServer, q: TraceQuestion, pid: str, cap: int) -> QuestionOutcome:
    from its_hub import AdaptiveSelfConsistency, LMOrchestrator, OpenAICompatibleLanguageModel

    from ..algorithms import DEFAULT_SYSTEM
    from ..certainty import get_extractor

    lm = OpenAICompatibleLanguageModel(
        endpoint=server.base_url,
        api_key="replay",
        model_name=server.model,
        system_prompt=DEFAULT_SYSTEM,  # the chat self_consistency sends
        temperature=TEMPERATURE,
        max_tries=1,
    )
    lm.headers["X-Program-Id"] = pid  # the replay server's program: draws without replacement
    method = AdaptiveSelfConsistency(
        ITS_HUB_THRESHOLD,
        consistency_space_projection_func=_its_hub_projection(),
        orchestrator=LMOrchestrator(max_concurrency=-1),  # concurrency is bounded per question here
    )
    try:
        result = await method.ainfer(lm, q.question, budget=cap, return_response_only=False)
    finally:
        await lm.close()
    # the tokens the server reported for every request (usage.completion_tokens), summed by its-hub
    answer = get_extractor("math")(result.the_one.get("content") or "")
    samples = len(result.responses)
    return QuestionOutcome(
        q.id, int(result.usage.completion_tokens), samples, answer, _correct(q.gold, answer)
    )


async def _our_program(
    server: ReplayServer, q: TraceQuestion, pid: str, cap: int, rule: StopRule | str
) -> QuestionOutcome:
    from ..algorithms import self_consistency
    from ..certainty import Cap
    from ..endpoints import Endpoint
    from ..program import StandaloneContext

    async with Endpoint(server.base_url, capabilities=server.capabilities) as endpoint:
        context = StandaloneContext(endpoint, rule if not isinstance(rule, str) else Cap(cap), program_id=pid)
        result = await self_consistency(q.question, context=context, rule=rule, n=cap, rounds="auto")
    answer = result.answer
    return QuestionOutcome(
        q.id, int(result.tokens.generated), len(result.answers), answer, _correct(q.gold, answer)
    )


def _rules(cap: int) -> dict[str, StopRule | str]:
    from ..certainty import Cap, default_rule

    return {"full": Cap(cap), "ours": default_rule(), "adaptive": "adaptive"}


async def _run_method(
    method: str, questions: Sequence[TraceQuestion], *, seed: int, cap: int, concurrency: int
) -> dict[str, Any]:
    """One method on every question, on a fresh replay server of ``seed``: per-question outcomes and
    the server's own counters (requests, generated tokens)."""
    from ..replay import ReplayServer

    rule = _rules(cap).get(method)
    limit = asyncio.Semaphore(concurrency)
    outcomes: dict[str, QuestionOutcome] = {}
    random.seed(seed)  # its-hub breaks tied votes with Python's random

    async def one(q: TraceQuestion) -> None:
        pid = f"peers-{q.id}"  # the same for every method: the same sample sequence per question
        async with limit:
            try:
                if rule is None:
                    outcomes[q.id] = await _its_hub_program(server, q, pid, cap)
                else:
                    outcomes[q.id] = await _our_program(server, q, pid, cap, rule)
            except Exception as exc:  # a failed program fails the benchmark, saying which
                raise PeersRunError(f"{method} on {q.id} (seed {seed}) failed: {exc!r}") from exc

    started = time.perf_counter()
    async with ReplayServer(questions, profile=PROFILE, time_scale=0.0, seed=seed) as server:
        before = server.metrics()
        try:
            async with asyncio.TaskGroup() as group:
                for q in questions:
                    group.create_task(one(q))
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
            if isinstance(first, PeersRunError):
                raise first from first.__cause__  # the first failure, with what caused it
            raise
        after = server.metrics()
    runs = [outcomes[q.id] for q in questions]
    tokens = sum(r.tokens for r in runs)
    return {
        "tokens": tokens,
        "server_tokens": int(after["tokens_generated"] - before["tokens_generated"]),
        "requests": int(after["requests_total"] - before["requests_total"]),
        "samples": sum(r.samples for r in runs) / len(runs),
        "accuracy": sum(r.correct for r in runs) / len(runs),
        "correct": sum(r.correct for r in runs),
        "wall_s": time.perf_counter() - started,
        "outcomes": [asdict(r) for r in runs],
    }


# -- the benchmark ----------------------------------------------------------------------------------------


def _summary(per_seed: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [float(run[key]) for run in per_seed]
    low, high = interval95(values)
    return {"mean": mean(values), "ci95": [low, high], "per_seed": values}


def run_peers_benchmark(
    traces: str | Path,
    *,
    questions: int = 100,
    seeds: int = 3,
    seed: int = 0,
    cap: int = 30,
    split: Split = "test",
    concurrency: int = 16,
    quick: bool = False,
    keep_outcomes: bool = False,
) -> dict[str, Any]:
    """Run :data:`PEER_METHODS` on the first ``questions`` questions of ``split`` for seeds
    ``seed .. seed + seeds - 1``; the figures as the documented JSON dict (``docs/peers.md``).

    Needs its-hub (the ``[peers]`` extra) and the replay server (``[server]``).
    """
    try:
        import its_hub
    except ImportError as exc:
        raise ValueError(f"bench peers needs its-hub: pip install 'dynasor-client[peers]' ({exc})") from exc
    if questions < 1 or seeds < 1 or cap < 1 or concurrency < 1:
        raise ValueError("--questions, --seeds, --cap and --concurrency must be >= 1")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    from ._batch_methods import load_ours

    path = Path(traces)
    try:
        loaded = [q for q in load_traces(path) if q.samples]
        sha = file_sha256(path)
    except OSError as exc:
        raise ValueError(f"cannot read traces {path}: {exc}") from exc
    notes: list[str] = []
    if quick:
        questions, seeds = min(questions, QUICK_QUESTIONS), min(seeds, QUICK_SEEDS)
        notes.append(f"--quick: {questions} questions, {seeds} seeds: a smoke run, not the benchmark")
    chosen = select_split(loaded, split)[:questions]
    if not chosen:
        raise ValueError(f"{path}: no questions with samples in split {split!r}")
    if len(chosen) < questions:
        notes.append(f"split {split!r} holds {len(chosen)} questions: all of them were run")
    ungraded = [q.id for q in chosen if not q.gold.strip()]
    if ungraded:
        raise ValueError(f"{path}: questions without a gold answer cannot be graded: {ungraded[:5]}")
    _, ours_info, ours_notes = load_ours(
        None, cap, traces=path, sha=sha, evaluated_ids=[q.id for q in chosen]
    )
    notes += ours_notes
    started = time.perf_counter()

    async def all_runs() -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in PEER_METHODS}
        for s in range(seed, seed + seeds):
            for method in PEER_METHODS:
                runs[method].append(
                    await _run_method(method, chosen, seed=s, cap=cap, concurrency=concurrency)
                )
        return runs

    runs = asyncio.run(all_runs())
    for per_seed in runs.values():
        for i, run in enumerate(per_seed):
            run["saved"] = 1.0 - run["tokens"] / runs["full"][i]["tokens"]
            if not keep_outcomes:
                del run["outcomes"]
    methods = {
        name: {
            key: _summary(per_seed, key)
            for key in ("tokens", "server_tokens", "requests", "samples", "accuracy", "saved")
        }
        for name, per_seed in runs.items()
    }
    return {
        "benchmark": "peers",
        "traces": path.name,
        "traces_sha256": sha,
        "split": split,
        "questions": len(chosen),
        "question_ids": [q.id for q in chosen],
        "cap": cap,
        "seeds": list(range(seed, seed + seeds)),
        "quick": quick,
        "concurrency": concurrency,
        "its_hub": {"version": its_hub.__version__, "threshold": ITS_HUB_THRESHOLD},
        "ours": ours_info,
        "methods": methods,
        "runs": runs,
        "notes": notes,
        **run_metadata(["its_hub"]),
        "elapsed_s": time.perf_counter() - started,
    }


def _interval(figure: dict[str, Any], fmt: Callable[[float], str]) -> str:
    low, high = figure["ci95"]
    middle = fmt(figure["mean"])
    return middle if not math.isfinite(low) else f"{middle} [{fmt(low)}, {fmt(high)}]"


def peers_table(result: dict[str, Any]) -> str:
    """The figures as a readable table: means over seeds with their 95% intervals."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    whole = lambda v: f"{v:,.0f}"  # noqa: E731
    rows = [
        [
            name,
            _interval(f["tokens"], whole),
            _interval(f["saved"], pct),
            _interval(f["accuracy"], pct),
            _interval(f["requests"], whole),
            f"{f['samples']['mean']:.2f}",
        ]
        for name, f in result["methods"].items()
    ]
    head = (
        f"bench peers: self-consistency over HTTP (replay server on loopback), {result['traces']} "
        f"{result['split']} ({result['questions']} questions), cap {result['cap']}, seeds {result['seeds']}; "
        f"its-hub {result['its_hub']['version']}"
    )
    table = format_table(["method", "tokens", "saved", "accuracy", "requests", "samples/q"], rows)
    lines = [head, table, "mean over seeds [95% t-interval]; tokens: generated, summed over the questions"]
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"({result['elapsed_s']:.1f} s)")
    return "\n".join(lines)
