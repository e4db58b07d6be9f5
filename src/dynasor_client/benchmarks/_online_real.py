"""``dynasor-client bench online --local`` / ``--endpoint URL``: the online comparison on a real server,
beside the replay engine's prediction of the same workload (``docs/online-benchmark.md``, *On a real
server*).

Steps: (1) time the idle server (:func:`probe_timings`) and fit a GPU profile to it (``fit_profile``);
(2) ask each question alone, all ``n`` samples in one request: its latency alone (the deadline's
base) and ``n`` recorded samples (the deadline's difficulty, and what the replay serves); (3) run the
same Poisson programs under each policy on the server, in real time, reading the server's own
generated-token counter around each run; (4) run them again through the replay engine on the fitted
profile, on a virtual clock, with the same deadlines; (5) report both side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import format_table, run_metadata
from ._online_simulate import OnlineRunError, ProgramOutcome, stop_rule
from ._online_stats import percentile, run_figures
from ._online_workload import POLICIES, OnlinePolicy, ProgramSpec, build_workload

if TYPE_CHECKING:
    from ..algorithms import Prompting
    from ..endpoints import Endpoint, Message, SamplingParams
    from ..program import Program
    from ..replay import GPUProfile, TimingSample
    from ..traces import DatasetItem, TraceQuestion

__all__ = ["RealOnlineConfig", "real_online_table", "run_real_online_benchmark"]

REAL_POLICIES = ("naive", "gang", "+certaindex", "+srw", "ours")  # those this module builds programs for

# Two solved examples: a 135M model copies the format, so its answers are short and boxed (as the demo).
FEW_SHOT: tuple[Message, ...] = (
    {"role": "user", "content": "Ann has 4 cups and buys 3 more. How many cups does she have now?"},
    {"role": "assistant", "content": "4 + 3 = 7. The answer is \\boxed{7}."},
    {
        "role": "user",
        "content": "Ben had 9 stamps and gave 5 of them away. How many stamps does he have left?",
    },
    {"role": "assistant", "content": "9 - 5 = 4. The answer is \\boxed{4}."},
)


@dataclass(frozen=True)
class RealOnlineConfig:
    """The settings of one real-server comparison (the CLI's help and the docs)."""

    questions: str  # a dataset file (JSON lines, ``load_dataset``)
    endpoint: str | None = None  # an OpenAI-compatible base URL; None: the embedded llama.cpp server
    model: str | None = None
    api_key: str | None = None
    count: int = 8  # questions drawn from the dataset
    programs: int = 20
    n: int = 8
    max_tokens: int = 128
    rule: str = "default"
    rate_x: float = 0.75  # arrival rate, a multiple of the fitted profile's capacity at full n
    slo_scale: float = 3.0
    policies: tuple[str, ...] = ("naive", "ours")
    seed: int = 0
    slots: int = 8  # the embedded server's parallel sequences; for a URL, the server's batch size
    window: int | None = None  # None: ``slots``
    few_shot: bool = True
    probe_batches: tuple[int, ...] = (1, 2, 4, 8)
    probe_contexts: tuple[int, ...] = (30, 150)
    probe_prefills: tuple[int, ...] = (64, 256)

    def check(self) -> None:
        bad = [p for p in self.policies if p not in REAL_POLICIES]
        if bad or "naive" not in self.policies:
            raise ValueError(f"policies must include 'naive' and be among {list(REAL_POLICIES)}, got {bad}")
        positive = {
            "questions": self.count, "programs": self.programs, "n": self.n,
            "max tokens": self.max_tokens, "slots": self.slots, "window": self.window or 1,
        }  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not (self.rate_x > 0 and self.slo_scale > 0):
            raise ValueError("the rate multiple and the SLO scale must be positive")
        if not Path(self.questions).is_file():
            raise ValueError(f"questions file {self.questions!r} does not exist (a dataset, JSON lines)")
        stop_rule(self.rule)


@dataclass(frozen=True)
class _Setup:
    """What both runs share: the questions as asked and recorded, the programs, the sampling."""

    questions: list[TraceQuestion]
    programs: list[ProgramSpec]
    rate: float
    params: SamplingParams
    prompting: dict[str, Prompting]  # by question id


def _prompting(question: str, few_shot: bool) -> Prompting:
    from ..algorithms import Prompting

    if not few_shot:
        return Prompting()
    return Prompting(messages=(*FEW_SHOT, {"role": "user", "content": question}))


def _program(spec: ProgramSpec, policy: OnlinePolicy, setup: _Setup, n: int, rule: str) -> Program:
    from ..algorithms import self_consistency
    from ..certainty import cap
    from ..program import as_program

    extra: dict[str, Any] = {"params": setup.params, "prompting": setup.prompting[spec.question.id]}
    if policy.certaindex:
        return as_program(
            self_consistency, spec.question.question, n=n, rule=stop_rule(rule), rounds="auto", **extra
        )
    return as_program(self_consistency, spec.question.question, n=n, rule=cap(n), rounds=[n], **extra)


async def _drive(
    endpoint: Endpoint, setup: _Setup, policy: OnlinePolicy, config: RealOnlineConfig, window: int
) -> list[ProgramOutcome]:
    """The programs submitted at their arrival times (seconds of the loop's clock: wall time on a real
    server, modelled time on the virtual clock) to a fresh runtime under ``policy``."""
    loop = asyncio.get_running_loop()
    handles = []
    async with policy.runtime(endpoint, window) as runtime:
        start = loop.time()
        for spec in setup.programs:
            delay = start + spec.arrival(setup.rate) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            deadline = spec.deadline(config.slo_scale) if policy.deadlines else None
            program = _program(spec, policy, setup, config.n, config.rule)
            handles.append((spec, runtime.submit(program, program_id=spec.program_id, deadline_s=deadline)))
        out = []
        for spec, handle in handles:
            try:
                result = await handle
            except Exception as exc:
                raise OnlineRunError(
                    f"{policy.name}: program {spec.program_id} failed: {type(exc).__name__}: {exc}"
                ) from exc
            latency = handle.record.latency()
            assert latency is not None
            out.append(ProgramOutcome(spec.index, latency, result.stop_reason.value, result.answer,
                                      result.tokens.generated, len(result.answers)))  # fmt: skip
    return out


async def _record_alone(
    endpoint: Endpoint, items: Sequence[DatasetItem], config: RealOnlineConfig, params: SamplingParams,
    say: Callable[[str], None],
) -> tuple[list[TraceQuestion], dict[str, float]]:  # fmt: skip
    """Each question alone on the idle server, all ``n`` samples in one request (naive's program):
    its samples as a recorded question and its latency alone."""
    from ..traces import TraceQuestion, TraceSample

    questions, base = [], {}
    for item in items:
        prompting = _prompting(item.question, config.few_shot)
        extract = prompting.extractor()
        started = time.perf_counter()
        generation = await endpoint.chat(prompting.chat(item.question), n=config.n, params=params)
        base[item.id] = time.perf_counter() - started
        samples = tuple(
            TraceSample(extract(c.text), c.num_tokens, text=c.text, finish_reason=c.finish_reason)
            for c in generation.choices
        )
        prompt_tokens = generation.usage.prompt_tokens // max(len(samples), 1) or None
        questions.append(TraceQuestion(item.id, item.question, item.gold, samples, prompt_tokens))
        say(f"  alone: {item.id} {base[item.id]:.2f} s, {sum(s.num_tokens for s in samples)} tokens")
    return questions, base


def _fit(samples: Sequence[TimingSample], name: str, description: str) -> GPUProfile:
    """``fit_profile``. When it leaves an iteration no time of its own (``a + b = 0``: on a CPU
    server the context term can take it all), two reduced fits, the per-sequence term or the context
    term taken from the base profile (negligible on a CPU), and the one closer to the samples."""
    from ..replay import fit_profile

    try:
        return fit_profile(samples, name=name, description=description)
    except ValueError:
        pass
    candidates = []
    for dropped, field in (("per-sequence", "running"), ("context", "kv_tokens")):
        reduced = [replace(s, **{field: 0}) for s in samples]
        with contextlib.suppress(ValueError):
            fitted = fit_profile(reduced, name=name, description=f"{description}; {dropped} term not fitted")
            candidates.append((_relative_error(fitted, samples), fitted))
    if not candidates:
        raise ValueError(f"cannot fit a timing profile to the server's {len(samples)} timing samples")
    return min(candidates, key=lambda c: c[0])[1]


def _scaled(profile: GPUProfile, scale: float) -> GPUProfile:
    """Every iteration ``scale`` times as long."""
    return replace(
        profile,
        name=f"{profile.name}-scaled",
        description=f"{profile.description}; x{scale:.3g} to the latencies alone",
        decode_base_s=profile.decode_base_s * scale,
        decode_per_seq_s=profile.decode_per_seq_s * scale,
        decode_per_kv_token_s=profile.decode_per_kv_token_s * scale,
        prefill_per_token_s=profile.prefill_per_token_s * scale,
    )


def _relative_error(profile: GPUProfile, samples: Sequence[TimingSample]) -> float:
    """The root mean square of the profile's relative error on the samples."""
    errors = [
        (profile.iteration_seconds(s.running, s.kv_tokens, s.prefill_tokens) - s.seconds) / s.seconds
        for s in samples
    ]
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def _drift(
    before: GPUProfile, after: GPUProfile, questions: Sequence[TraceQuestion], config: RealOnlineConfig
) -> dict[str, float]:
    """How the server's speed moved during the runs: an iteration of a full batch at the workload's
    mean context and the prefill of its mean prompt, timed after over timed before."""
    prompt = sum(q.prompt_tokens or 0 for q in questions) / len(questions)
    context = round(config.slots * (prompt + config.max_tokens / 4))
    decode = after.iteration_seconds(config.slots, context) / before.iteration_seconds(config.slots, context)
    prefill = after.iteration_seconds(1, round(prompt), round(prompt)) / before.iteration_seconds(
        1, round(prompt), round(prompt)
    )
    return {"decode_after_over_before": decode, "prefill_after_over_before": prefill}


def _outcomes(programs: Sequence[ProgramSpec], outcomes: Sequence[ProgramOutcome], scale: float) -> list[Any]:
    """Each program's own figures (seconds: wall on the server, modelled in the prediction)."""
    return [
        {
            "index": o.index,
            "question": programs[o.index].question.id,
            "deadline_s": programs[o.index].deadline(scale),
            "latency_s": o.latency_s,
            "tokens": o.tokens,
            "samples": o.samples,
            "stop_reason": o.stop_reason,
            "met": o.met(programs[o.index].deadline(scale)),
        }
        for o in outcomes
    ]


def _capacity(profile: GPUProfile, questions: Sequence[TraceQuestion], n: int) -> float:
    """Programs per second the profile serves at full ``n`` with a full batch (as ``capacity_rate``)."""
    lengths = [s.num_tokens for q in questions for s in q.samples]
    mean_len = sum(lengths) / len(lengths)
    prompt = sum(q.prompt_tokens or len(q.question) // 4 for q in questions) / len(questions)
    return profile.decode_tokens_per_s(profile.max_batch, prompt + mean_len / 2) / (n * mean_len)


def _workload(
    questions: list[TraceQuestion], base: dict[str, float], config: RealOnlineConfig
) -> list[ProgramSpec]:
    programs = build_workload(questions, config.programs + 100, seed=config.seed)[: config.programs]
    return [
        replace(p, program_id=f"real-{config.seed}-{p.index}", base_s=base[p.question.id]) for p in programs
    ]


@contextlib.asynccontextmanager
async def _server(config: RealOnlineConfig) -> AsyncIterator[tuple[str, str | None]]:
    """The base URL to use and the embedded server's description (None for a URL)."""
    if config.endpoint is not None:
        yield config.endpoint, None
        return
    from ..local import LocalLlamaServer

    ctx = 512 + config.max_tokens  # the few-shot prompt, the question and the answer
    async with LocalLlamaServer(n_parallel=config.slots, n_ctx_per_slot=ctx) as local:
        yield local.base_url, f"embedded llama.cpp, {local.model}, {config.slots} slots, {ctx} tokens each"


async def _real(
    config: RealOnlineConfig, say: Callable[[str], None]
) -> tuple[dict[str, Any], _Setup, GPUProfile, list[float], GPUProfile]:
    """The real runs: the figures, the workload and the fitted profile (for :func:`_predict`), and
    each question's latency alone."""
    from ..endpoints import Endpoint, SamplingParams
    from ..traces import load_dataset
    from ._online_real_probe import ServerCounters, fresh_connections, probe_timings, root_url

    items = load_dataset(config.questions)
    items = random.Random(config.seed).sample(items, min(config.count, len(items)))
    params = SamplingParams(temperature=0.7, max_tokens=config.max_tokens)
    window = config.window or config.slots
    async with (
        _server(config) as (base_url, embedded),
        Endpoint(base_url, model=config.model, api_key=config.api_key, timeout=600, stream=False) as endpoint,
        fresh_connections(30.0) as http,
    ):
        counters = ServerCounters(http, root_url(base_url))
        model = await endpoint.model_name()
        await endpoint.capabilities()  # detected now, outside the counted runs
        say(f"{embedded or base_url}: model {model}; timing the idle server")
        probe: dict[str, Any] = {
            "batches": sorted({b for b in config.probe_batches if b <= config.slots} | {1}),
            "contexts": config.probe_contexts, "prefills": config.probe_prefills,
        }  # fmt: skip
        samples = await probe_timings(base_url, model, api_key=config.api_key, **probe)
        profile = _fit(samples, f"fitted-{model}", f"{model} at {embedded or base_url}")
        profile = replace(
            profile, max_batch=config.slots, kv_capacity_tokens=config.slots * (512 + config.max_tokens)
        )
        say(f"fitted: {profile.description}")
        questions, base = await _record_alone(endpoint, items, config, params, say)
        prompting = {q.id: _prompting(q.question, config.few_shot) for q in questions}
        setup = _Setup(questions, _workload(questions, base, config), 1.0, params, prompting)
        # The rate from the fitted profile scaled to the latencies alone just measured: a fit to a
        # few noisy timings may be far off, and a rate off by 10x makes the comparison meaningless.
        modelled = await asyncio.to_thread(lambda: _predict(setup, config, profile, window, ())[1])
        scale = sum(base.values()) / sum(modelled)
        scaled = _scaled(profile, scale)
        capacity = _capacity(scaled, questions, config.n)
        setup = replace(setup, rate=config.rate_x * capacity)
        say(
            f"latency alone: real {sum(base.values()) / len(base):.2f} s, fitted profile "
            f"{sum(modelled) / len(modelled):.2f} s: x{scale:.2f}; capacity {capacity:.3g} programs/s"
        )
        real: dict[str, Any] = {}
        for name in config.policies:
            before = await counters.settled()
            started = time.perf_counter()
            outcomes = await _drive(endpoint, setup, POLICIES[name], config, window)
            after = await counters.settled()
            server_tokens, prefilled = (
                None if b is None or a is None else a - b for b, a in zip(before, after, strict=True)
            )
            real[name] = {
                **run_figures(setup.programs, outcomes, config.slo_scale),
                "server_tokens": server_tokens,
                "prefill_tokens": prefilled,
                "client_tokens": sum(o.tokens for o in outcomes),
                "wall_s": time.perf_counter() - started,
                "outcomes": _outcomes(setup.programs, outcomes, config.slo_scale),
            }
            say(f"  real {name}: attainment {real[name]['attainment']:.0%}, "
                f"{real[name]['wall_s']:.0f} s, server tokens {server_tokens}")  # fmt: skip
        after_samples = await probe_timings(base_url, model, api_key=config.api_key, **probe)
        after_profile = _fit(after_samples, f"fitted-{model}-after", "the same, timed after the runs")
    figures = {
        "server": {"url": config.endpoint, "embedded": embedded, "model": model, "slots": config.slots},
        "profile": {**asdict(profile), "timing_samples": [asdict(s) for s in samples]},
        "profile_after": {**asdict(after_profile), "timing_samples": [asdict(s) for s in after_samples]},
        "drift": _drift(profile, after_profile, questions, config),
        "capacity_rate": capacity,
        "profile_scale": scale,
        "rate": setup.rate,
        "window": window,
        "questions_asked": [q.id for q in questions],
        "real": real,
    }
    return figures, setup, profile, [base[q.id] for q in questions], scaled


def _predict(
    setup: _Setup, config: RealOnlineConfig, profile: GPUProfile, window: int, policies: Sequence[str]
) -> tuple[dict[str, Any], list[float]]:
    """Each question's modelled latency alone, and the same programs and deadlines under ``policies``
    on the replay engine (``profile``, the recorded samples), on a virtual clock."""
    from ..replay import InProcessReplay, run_virtual

    async def main() -> tuple[dict[str, Any], list[float]]:
        out: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        alone = []
        async with InProcessReplay(setup.questions, profile=profile, seed=config.seed) as replay:
            async with replay.endpoint(max_in_flight=100_000) as endpoint:
                for question in setup.questions:
                    started = loop.time()
                    prompting = setup.prompting[question.id]
                    await endpoint.chat(prompting.chat(question.question), n=config.n, params=setup.params)
                    alone.append(loop.time() - started)
                    await asyncio.sleep(1.0)  # idle between questions
            for name in policies:
                before = replay.metrics()
                async with replay.endpoint(max_in_flight=100_000) as endpoint:
                    outcomes = await _drive(endpoint, setup, POLICIES[name], config, window)
                await asyncio.sleep(1.0)  # the engine takes in the last aborts
                after = replay.metrics()

                def delta(key: str, after: dict[str, Any] = after, before: dict[str, Any] = before) -> int:
                    return int(after[key]) - int(before[key])

                out[name] = {
                    **run_figures(setup.programs, outcomes, config.slo_scale),
                    "server_tokens": delta("tokens_generated"),
                    "prefill_tokens": delta("prompt_tokens") - delta("cached_prompt_tokens"),
                    "client_tokens": sum(o.tokens for o in outcomes),
                    "outcomes": _outcomes(setup.programs, outcomes, config.slo_scale),
                }
        return out, alone

    return run_virtual(main())


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "p10": percentile(values, 0.1), "p90": percentile(values, 0.9)}


def run_real_online_benchmark(
    config: RealOnlineConfig, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The comparison on a real server and its prediction (module docs); raises ValueError on bad
    settings, OnlineRunError when a program fails."""
    config.check()
    started = time.perf_counter()
    figures, setup, profile, alone, scaled = asyncio.run(_real(config, progress or (lambda _: None)))
    real = figures.pop("real")
    window = figures["window"]
    predicted, predicted_alone = _predict(setup, config, profile, window, config.policies)
    predicted_scaled, scaled_alone = _predict(setup, config, scaled, window, config.policies)
    figures["base_latency_s"] = {
        "real": _spread(alone),
        "predicted": _spread(predicted_alone),
        "predicted_scaled": _spread(scaled_alone),
    }
    figures["policies"] = {
        name: {"real": real[name], "predicted": predicted[name], "predicted_scaled": predicted_scaled[name]}
        for name in config.policies
    }
    return {
        "benchmark": "online-real",
        "questions": Path(config.questions).name,
        "n": config.n,
        "max_tokens": config.max_tokens,
        "rule": config.rule,
        "programs": config.programs,
        "rate_x": config.rate_x,
        "slo_scale": config.slo_scale,
        "seed": config.seed,
        **figures,
        **run_metadata(),
        "elapsed_s": time.perf_counter() - started,
    }


def real_online_table(result: dict[str, Any]) -> str:
    """Per policy, the real run beside the replay engine's prediction."""

    def pct(v: float) -> str:
        return f"{v:.0%}" if math.isfinite(v) else "-"

    rows = []
    for name, both in result["policies"].items():
        for kind in ("real", "predicted", "predicted_scaled"):
            f = both[kind]
            server = f["server_tokens"]
            rows.append([
                name, kind, pct(f["attainment"]), f"{f['latency_mean_s']:.2f}", f"{f['latency_p90_s']:.2f}",
                f"{f['tokens']:.0f}", "-" if server is None else f"{server / f['programs']:.0f}",
                "-" if f["prefill_tokens"] is None else f"{f['prefill_tokens'] / f['programs']:.0f}",
                pct(f["accuracy"]), pct(f["cut"]),
            ])  # fmt: skip
    base = result["base_latency_s"]
    head = (
        f"{result['programs']} programs at {result['rate']:.3g}/s ({result['rate_x']:g} x the scaled "
        f"capacity {result['capacity_rate']:.3g}/s), SLO x{result['slo_scale']:g}, n={result['n']}; "
        f"latency alone (mean): real {base['real']['mean']:.2f} s, "
        f"predicted {base['predicted']['mean']:.2f} s (scaled x{result['profile_scale']:.2f}: "
        f"{base['predicted_scaled']['mean']:.2f} s)"
    )
    columns = [
        "policy",
        "run",
        "attainment",
        "latency mean s",
        "p90 s",
        "tokens",
        "server tokens",
        "prefilled",
        "accuracy",
        "cut",
    ]
    drift = result["drift"]
    head += (
        f"\nserver speed timed after the runs over before: decode x{drift['decode_after_over_before']:.2f}, "
        f"prefill x{drift['prefill_after_over_before']:.2f} (1 = steady)"
    )
    return head + "\n" + format_table(columns, rows)
