"""``dynasor-client bench cot``: long chain of thought, stopped early or not, on one server
(``docs/cot-benchmark.md``).

Every method answers the same questions with the same sampling seeds, one program per (question,
seed, method), each program alone on the server (``concurrency`` programs at once, methods in a
shuffled order so drift does not favour one). The methods:

- ``full``: one chain of thought to the model's end or ``max_tokens`` (no early stop); a chain cut
  at ``max_tokens`` gets Dynasor-CoT's forced answer (its tokens count as probe tokens);
- ``dynasor``: Dynasor-CoT, chunked decoding with a probe per chunk; ``dynasor-stream``: the same on
  one streamed trace (where the library offers it);
- ``deepconf``: DeepConf online, several traces, stopped on low group confidence (where offered);
- ``deer``: DEER-style trial answers at "Wait"-type points, stopped on a confident trial answer.

Per outcome: correct or not, tokens decoded (generated + probe: the probes' tokens count), the
uncached prompt tokens, HTTP generation requests (counted at the transport, by ``X-Program-Id``)
and wall time. The report (:mod:`._cot_report`) gives means with 95% intervals over questions and
each method's paired difference to ``full``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ._common import jsonable, run_metadata

if TYPE_CHECKING:
    from ..algorithms import Prompting
    from ..endpoints import Endpoint, SamplingParams
    from ..program import BoundProgram
    from ..traces import DatasetItem

__all__ = ["COT_METHODS", "CotConfig", "CotOutcome", "run_cot_benchmark"]

Reasoning = Literal["auto", "think", "plain"]
#: Every method ``bench cot`` knows, in report order (those the library lacks are skipped by default).
COT_METHODS = ("full", "dynasor", "dynasor-stream", "deepconf", "deer")
#: Model names that think in ``<think>`` by default (``--reasoning auto``).
THINKING_MODELS = re.compile(r"r1|qwen3|qwq|think|reason|gpt-oss", re.IGNORECASE)
#: How a reasoning model is asked (DeepSeek-R1's advice: no system prompt, the instruction in the turn).
#: The programs' details kept in each outcome.
KEPT_DETAILS = (
    "finished",
    "forced",
    "decoding",
    "probes",
    "trials",
    "generated_tokens",
    "traces",
    "stopped_early",
)
THINK_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class CotConfig:
    """The settings of one ``bench cot`` run (the CLI's help and the docs)."""

    dataset: str  # JSON lines (``load_dataset``): GSM8K, MATH500, AIME, ...
    endpoint: str | None = None  # an OpenAI-compatible base URL; None: the embedded llama.cpp server
    model: str | None = None
    api_key: str | None = None
    traces: str | None = None  # a traces file: serve it with the replay engine instead
    questions: int = 30
    seeds: int = 3
    seed: int = 0
    max_tokens: int = 384
    methods: tuple[str, ...] | None = None  # None: every method the library offers
    reasoning: Reasoning = "auto"
    temperature: float = 0.6
    top_p: float = 0.95
    chunk_tokens: int = 32  # Dynasor-CoT's T
    window: int = 3  # Dynasor-CoT's agreement window
    deer_threshold: float = 0.95
    deepconf_traces: int = 8
    deepconf_warmup: int = 4
    deepconf_group: int | None = None  # None: max_tokens / 8 within [16, 2048] (the paper: 2048)
    concurrency: int = 1
    slots: int = 4  # the embedded server's parallel sequences
    timeout_s: float = 600.0
    time_scale: float = 1.0  # the replay engine's pace (1: the GPU profile's real time)
    outcomes_log: str | None = None  # append each outcome here as a JSON line as it finishes
    quick: bool = False

    def group(self) -> int:
        """DeepConf's sliding window: the paper's 2048 tokens suit chains of 10k+ tokens; a short
        chain gets an eighth of ``max_tokens`` (at least 16) unless ``deepconf_group`` says."""
        return self.deepconf_group or min(2048, max(16, self.max_tokens // 8))

    def resolved(self) -> CotConfig:
        """``quick`` applied and the methods chosen; raises ValueError on bad settings."""
        config = self
        if self.quick:
            config = replace(self, questions=min(self.questions, 2), seeds=1,
                             max_tokens=min(self.max_tokens, 32), chunk_tokens=min(self.chunk_tokens, 16),
                             deepconf_traces=min(self.deepconf_traces, 3),
                             deepconf_warmup=min(self.deepconf_warmup, 2),
                             concurrency=max(self.concurrency, self.slots))  # fmt: skip
        offered = available_methods()
        methods = config.methods or offered
        unknown = [m for m in methods if m not in COT_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose among {list(COT_METHODS)}")
        missing = [m for m in methods if m not in offered]
        if missing:
            raise ValueError(f"this version of the library does not offer {missing} yet")
        positive = {"questions": config.questions, "seeds": config.seeds, "max tokens": config.max_tokens,
                    "chunk tokens": config.chunk_tokens, "window": config.window,
                    "concurrency": config.concurrency, "slots": config.slots}  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < config.deer_threshold <= 1:
            raise ValueError(f"the DEER threshold must be in (0, 1], got {config.deer_threshold}")
        if not Path(config.dataset).is_file():
            raise ValueError(f"dataset {config.dataset!r} does not exist (JSON lines, e.g. gsm8k/test.jsonl)")
        if config.traces is not None and not Path(config.traces).is_file():
            raise ValueError(f"traces file {config.traces!r} does not exist")
        if config.traces is not None and config.endpoint is not None:
            raise ValueError("give --endpoint or --traces, not both")
        return replace(config, methods=tuple(m for m in COT_METHODS if m in methods))


@dataclass(frozen=True)
class CotOutcome:
    """One program's outcome."""

    method: str
    question: str
    seed: int
    answer: str | None
    correct: bool
    generated: int
    probe: int
    prompt: int  # uncached prompt tokens
    requests: int
    wall_s: float
    stop_reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Tokens decoded, probes included."""
        return self.generated + self.probe


def available_methods() -> tuple[str, ...]:
    """The methods this version of the library offers (streamed Dynasor-CoT, DeepConf and DEER
    arrive as algorithms; ``bench cot`` runs whichever exist)."""
    import inspect

    from .. import algorithms
    from ..algorithms import dynasor_cot

    offered = ["full", "dynasor"]
    if "decoding" in inspect.signature(dynasor_cot).parameters:
        offered.append("dynasor-stream")
    offered += [
        name for name, fn in (("deepconf", "deepconf_online"), ("deer", "deer")) if hasattr(algorithms, fn)
    ]
    return tuple(offered)


def prompting_for(question: str, thinking: bool) -> Prompting:
    """How a question is asked: a thinking model gets the instruction in its turn and no system
    prompt; another model the library's default system prompt."""
    from ..algorithms import Prompting

    if not thinking:
        return Prompting()
    return Prompting(messages=({"role": "user", "content": f"{question}\n{THINK_INSTRUCTION}"},))


def method_program(
    method: str, question: str, config: CotConfig, params: SamplingParams, prompting: Prompting
) -> BoundProgram:
    """The program of ``method`` for ``question`` (module docs)."""
    from .. import algorithms
    from ..program import as_program

    common: dict[str, Any] = {"params": params, "prompting": prompting}
    cot = {"chunk_tokens": config.chunk_tokens, "window": config.window, "max_tokens": config.max_tokens}
    # Chunked decoding named where the library also streams (its "auto" streams where it can).
    chunked: dict[str, Any] = {"decoding": "chunked"} if "dynasor-stream" in available_methods() else {}
    if method == "full":  # one chunk of max_tokens: one request, no probe, the answer forced only when cut
        return as_program(algorithms.dynasor_cot, question, chunk_tokens=config.max_tokens,
                          max_tokens=config.max_tokens, **chunked, **common)  # fmt: skip
    if method == "dynasor":
        return as_program(algorithms.dynasor_cot, question, **cot, **chunked, **common)
    if method == "dynasor-stream":
        return as_program(algorithms.dynasor_cot, question, decoding="stream", **cot, **common)
    if method == "deepconf":
        return as_program(algorithms.deepconf_online, question, n=config.deepconf_traces,
                          warmup=config.deepconf_warmup, group=config.group(),
                          parallel=min(config.deepconf_traces, config.slots), max_tokens=config.max_tokens,
                          **common)  # fmt: skip
    if method == "deer":
        return as_program(
            algorithms.deer, question, threshold=config.deer_threshold, max_tokens=config.max_tokens, **common
        )
    raise ValueError(f"unknown method {method!r}")


class CountingTransport(httpx.AsyncBaseTransport):
    """An HTTP transport that counts generation requests (POST ``.../completions``) per
    ``X-Program-Id``: every HTTP request sent, retries and cancelled ones included. Generation
    requests and the rest (``/tokenize``, ...) keep separate connection pools, as the endpoint's two
    clients do without it (llama.cpp closes kept-alive connections a shared pool would reuse)."""

    def __init__(self) -> None:
        self.generation, self.other = httpx.AsyncHTTPTransport(), httpx.AsyncHTTPTransport()
        self.requests: collections.Counter[str] = collections.Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/completions"):
            self.requests[request.headers.get("x-program-id", "")] += 1
            return await self.generation.handle_async_request(request)
        return await self.other.handle_async_request(request)

    async def aclose(self) -> None:
        await self.generation.aclose()
        await self.other.aclose()


@contextlib.asynccontextmanager
async def _server(config: CotConfig) -> AsyncIterator[tuple[str, str]]:
    """The base URL to use and a description of the server behind it."""
    if config.endpoint is not None:
        yield config.endpoint, config.endpoint
        return
    if config.traces is not None:
        from ..replay import ReplayServer
        from ..traces import load_traces

        questions = load_traces(config.traces)
        async with ReplayServer(questions, time_scale=config.time_scale, seed=config.seed) as replay:
            yield replay.base_url, f"replay engine of {Path(config.traces).name} (x{config.time_scale:g})"
        return
    from ..local import LocalLlamaServer

    ctx = 640 + config.max_tokens  # the prompt, the chain and a probe suffix
    async with LocalLlamaServer(n_parallel=config.slots, n_ctx_per_slot=ctx) as local:
        yield local.base_url, f"embedded llama.cpp, {local.model}, {config.slots} slots, {ctx} tokens each"


async def _thinking(endpoint: Endpoint, config: CotConfig, model: str) -> bool:
    """Whether the model thinks in ``<think>`` (``--reasoning``; auto: its name or its template)."""
    if config.reasoning != "auto":
        return config.reasoning == "think"
    if THINKING_MODELS.search(model):
        return True
    with contextlib.suppress(Exception):
        rendered = await endpoint.render_chat([{"role": "user", "content": "1+1?"}])
        return isinstance(rendered, str) and "<think>" in rendered
    return False


def _append_line(path: str, outcome: CotOutcome) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(jsonable({**asdict(outcome), "tokens": outcome.tokens})) + "\n")


def _correct(answer: str | None, gold: str) -> bool:
    from ..certainty import cluster_answers

    return answer is not None and len(set(cluster_answers([gold, answer]))) == 1


async def _run_all(
    config: CotConfig, items: Sequence[DatasetItem], say: Callable[[str], None]
) -> tuple[list[CotOutcome], dict[str, Any]]:
    from ..endpoints import Endpoint, SamplingParams

    counting = CountingTransport()
    async with (
        _server(config) as (base_url, described),
        Endpoint(base_url, model=config.model, api_key=config.api_key, timeout=config.timeout_s,
                 transport=counting) as endpoint,
    ):  # fmt: skip
        model = await endpoint.model_name()
        await endpoint.capabilities()
        thinking = await _thinking(endpoint, config, model)
        say(f"{described}: model {model}, {'thinking in <think>' if thinking else 'no think tags'}")
        jobs = [(seed, i, m) for seed in range(config.seed, config.seed + config.seeds)
                for i in range(len(items)) for m in config.methods or ()]  # fmt: skip
        random.Random(config.seed).shuffle(jobs)
        gate = asyncio.Semaphore(config.concurrency)
        outcomes: list[CotOutcome] = []

        async def one(seed: int, index: int, method: str) -> None:
            item = items[index]
            params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                                    seed=seed * 100_003 + index)  # fmt: skip
            program = method_program(
                method, item.question, config, params, prompting_for(item.question, thinking)
            )
            program_id = f"cot-{method}-{seed}-{index}"
            async with gate:
                started = time.perf_counter()
                result = await program.run(endpoint, program_id=program_id)
                wall = time.perf_counter() - started
            usage = result.tokens
            details = {k: v for k, v in result.details.items() if k in KEPT_DETAILS}
            outcomes.append(CotOutcome(
                method, item.id, seed, result.answer, _correct(result.answer, item.gold), usage.generated,
                usage.probe, usage.prompt - usage.cached_prompt, counting.requests[program_id], wall,
                result.stop_reason.value, details,
            ))  # fmt: skip
            if config.outcomes_log is not None:
                await asyncio.to_thread(_append_line, config.outcomes_log, outcomes[-1])
            say(f"  {method:>14} q{index} seed {seed}: {'ok ' if outcomes[-1].correct else 'bad'} "
                f"{outcomes[-1].tokens} tokens, {outcomes[-1].requests} requests, {wall:.1f} s")  # fmt: skip

        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(one(*job))
    server = {"url": config.endpoint, "described": described, "model": model, "thinking": thinking}
    return outcomes, server


def run_cot_benchmark(config: CotConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``bench cot`` (module docs): the settings, every outcome and the summary per method."""
    from ..traces import load_dataset
    from ._cot_report import summarize

    config = config.resolved()
    items = load_dataset(config.dataset)[: config.questions]
    started = time.perf_counter()
    outcomes, server = asyncio.run(_run_all(config, items, progress or (lambda _: None)))
    return {
        "benchmark": "cot",
        "dataset": Path(config.dataset).name,
        "config": {k: v for k, v in asdict(config).items() if k != "api_key"},
        "server": server,
        "questions_asked": [item.id for item in items],
        "summary": summarize(outcomes, config.methods or ()),
        "outcomes": [{**asdict(o), "tokens": o.tokens} for o in outcomes],
        **run_metadata(),
        "elapsed_s": time.perf_counter() - started,
    }
