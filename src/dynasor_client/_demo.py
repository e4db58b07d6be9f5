"""``dynasor-client demo``: plain self-consistency against certaindex, end to end, in a few minutes.

The same questions are answered twice through the :class:`~dynasor_client.runtime.Runtime`
(``run_batch``, with a progress bar):

- **plain SC**: self-consistency with a fixed ``n`` samples per question (majority vote);
- **certaindex**: the same program under the stop rule ``entropy_at_least(0.7, at=...) | hopeless(...)``:
  it stops early where the answers agree (*confident*) and cuts questions whose answers still scatter
  after the detect round (*hopeless*): more samples would not settle them.

Backends:

- default: the embedded local model (llama.cpp with SmolLM2-135M-Instruct on 127.0.0.1) on short
  arithmetic word problems generated in code from ``--seed`` (known answers, no dataset). A 135M
  model is mostly wrong and its answers scatter, so few questions are certified and many are cut as
  hopeless: the point is the mechanics and the tokens, not the accuracy.
- ``--endpoint URL``: the same questions on any OpenAI-compatible server.

  On both, sample ``i`` of a question is drawn with seed ``--seed + i`` in both methods. On a server
  that numbers a seeded request's choices the same way (llama.cpp does), the two methods share
  their samples, as far as batching keeps the numerics, and differ only where certaindex stopped.
- ``--traces FILE``: recorded real-model samples (``shared/data/traces`` format) served by the replay
  engine (:class:`~dynasor_client.replay.ReplayServer` on loopback); the questions are the traces'
  questions with their gold answers, and the savings are those of a real model.

Accuracy compares each majority answer with the gold one under the library's answer normalisation
and equivalence (:func:`~dynasor_client.certainty.normalize_answer`, ``MathEquivalence``). Tokens
are generated (completion) tokens; ``saved`` is the certaindex run's saving over plain SC. ``--json``
writes every figure and each question's outcome; a plot is saved unless ``--no-plot``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .algorithms import DEFAULT_SYSTEM, Prompting, self_consistency
from .certainty import StopRule, cap, entropy_at_least, hopeless
from .certainty.answers import default_equivalence
from .endpoints import Endpoint, Message, SamplingParams
from .program import ProgramResult, StopReason, as_program
from .runtime import Runtime

__all__ = [
    "DemoQuestion",
    "DemoReport",
    "MethodFigures",
    "demo_command",
    "demo_rule",
    "format_table",
    "generate_questions",
    "run_demo",
    "write_plot",
]

DEFAULT_QUESTIONS = 16
DEFAULT_N = 8
DEFAULT_TRACE_QUESTIONS = 200
DEFAULT_LOCAL_MAX_TOKENS = 32  # the few-shot answer "4 + 3 = 7. The answer is \boxed{7}." is ~17 tokens
DEFAULT_ENDPOINT_MAX_TOKENS = 256
DEFAULT_PLOT = "dynasor-demo.png"
CONFIDENT_AT_LEAST = 0.7  # the paper's threshold on the entropy certaindex H~
HOPELESS_BELOW = 0.3  # H~ below this at a check: cut (n=4: 2/1/1 or all different; n=5: 2/1/1/1)
LOCAL_PARALLEL = 16  # llama.cpp slots: on 1-2 CPU threads decoding is compute-bound from ~8 on
_REACH_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------------------- questions

_NAMES = (("Tom", "he"), ("Sara", "she"), ("Ali", "he"), ("Mia", "she"), ("Omar", "he"), ("Lena", "she"))
_ITEMS = ("apples", "pencils", "stickers", "cookies", "marbles", "books", "shells", "cards")


@dataclass(frozen=True, slots=True)
class DemoQuestion:
    """A question, its gold answer and the chat it is asked with."""

    id: str
    text: str
    gold: str
    messages: tuple[Message, ...]


# Two solved examples (names and items outside the generated pool): a 135M model copies the format,
# so its answers are short and boxed, which makes the demo fast and the votes meaningful.
FEW_SHOT: tuple[Message, ...] = (
    {"role": "user", "content": "Ann has 4 cups and buys 3 more. How many cups does she have now?"},
    {"role": "assistant", "content": "4 + 3 = 7. The answer is \\boxed{7}."},
    {
        "role": "user",
        "content": "Ben had 9 stamps and gave 5 of them away. How many stamps does he have left?",
    },
    {"role": "assistant", "content": "9 - 5 = 4. The answer is \\boxed{4}."},
)


def _word_problem(rng: random.Random) -> tuple[str, int]:
    name, pronoun = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(3, 30), rng.randint(2, 20)
        return f"{name} has {a} {item} and buys {b} more. How many {item} does {pronoun} have now?", a + b
    if kind == 1:
        a = rng.randint(6, 30)
        b = rng.randint(2, a - 2)
        return (
            f"{name} had {a} {item} and gave {b} of them to a friend. "
            f"How many {item} does {pronoun} have left?",
            a - b,
        )
    if kind == 2:
        a, b = rng.randint(3, 25), rng.randint(2, 15)
        return (
            f"There are {a} {item} in a box and {name} puts in {b} more. How many {item} are in the box now?",
            a + b,
        )
    if kind == 3:
        a, b = rng.randint(2, 5), rng.randint(2, 6)
        return (
            f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {pronoun} have?",
            a * b,
        )
    a = rng.randint(8, 30)
    b = rng.randint(2, a - 3)
    return f"{name} had {a} {item} and lost {b} of them. How many {item} are left?", a - b


def generate_questions(count: int, seed: int = 0) -> list[DemoQuestion]:
    """``count`` distinct arithmetic word problems with their answers, the same for the same seed."""
    if count < 1:
        raise ValueError(f"--questions must be >= 1, got {count}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[DemoQuestion] = []
    while len(out) < count:
        text, answer = _word_problem(rng)
        if text in seen:
            continue
        seen.add(text)
        messages = (*FEW_SHOT, {"role": "user", "content": text})
        out.append(DemoQuestion(f"demo-{len(out)}", text, str(answer), messages))
    return out


def _trace_questions(path: str, count: int | None, seed: int, n: int | None) -> tuple[list[Any], int]:
    """The recorded questions to replay (a seeded sample of ``count``, in file order) and the ``n``."""
    from .traces import load_traces

    if not Path(path).is_file():
        raise ValueError(f"traces file not found: {path}")
    try:
        traces = load_traces(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read traces file {path}: {exc}") from exc
    usable = [q for q in traces if q.question.strip() and q.samples]
    if not usable:
        raise ValueError(f"{path}: no question with text and recorded samples")
    if count is not None and count < 1:
        raise ValueError(f"--questions must be >= 1, got {count}")
    if count is None:
        count = DEFAULT_TRACE_QUESTIONS
    if count < len(usable):
        keep = set(random.Random(seed).sample(range(len(usable)), count))
        usable = [q for i, q in enumerate(usable) if i in keep]
    recorded = min(len(q.samples) for q in usable)
    if n is None:
        n = recorded
    elif n > recorded:
        raise ValueError(f"--n {n} is more than the {recorded} samples recorded per question in {path}")
    return usable, n


# --------------------------------------------------------------------------------------- the rule


def detect_round(n: int) -> int:
    """Samples before the certaindex run first consults its rule: the paper's 5, at most half of n."""
    return max(2, min(5, n // 2))


def demo_rule(n: int) -> tuple[StopRule, list[int]]:
    """The certaindex method's stop rule for ``n`` samples and its round sizes (summing to ``n``).

    ``cap(n) | entropy_at_least(0.7, at=[d]) | hopeless(after=d, below=0.3)`` with ``d`` the detect
    round, in rounds of ``d`` and ``n - d`` samples: at ``d`` it stops when the answers agree
    (n = 8: all four alike) and cuts the question when they scatter (2/1/1 or all different); else it
    samples to ``n``. A cut question still answers with its majority so far. One check only: the
    normalised entropy H~ grows with the sample count (a 9/8 split of two answers is H~ = 0.76 at 17
    samples), so the same threshold later would stop on coin flips.
    """
    if n < 2:
        raise ValueError(f"--n must be >= 2 (certaindex needs two samples to compare), got {n}")
    d = detect_round(n)
    rule = cap(n) | entropy_at_least(CONFIDENT_AT_LEAST, at=[d]) | hopeless(d, HOPELESS_BELOW)
    return rule, [d, n - d] if d < n else [n]


def describe_rule(n: int) -> str:
    return (
        f"stop when H~ >= {CONFIDENT_AT_LEAST} at {detect_round(n)} samples (confident); "
        f"cut when H~ < {HOPELESS_BELOW} there (hopeless); else all {n}"
    )


# --------------------------------------------------------------------------------------- figures


@dataclass
class MethodFigures:
    """One method's outcome over the questions."""

    name: str
    label: str
    questions: int
    correct: int
    tokens: int  # generated tokens, all questions
    prompt_tokens: int
    samples: int
    wall_s: float
    stops: dict[str, int]
    failed: int = 0
    modelled_s: float | None = None  # the replay engine's modelled GPU seconds

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "questions": self.questions,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "tokens": self.tokens,
            "tokens_per_question": self.tokens / self.questions if self.questions else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "samples": self.samples,
            "samples_per_question": self.samples / self.questions if self.questions else 0.0,
            "wall_s": self.wall_s,
            "modelled_gpu_s": self.modelled_s,
            "stops": dict(self.stops),
            "failed": self.failed,
        }


@dataclass
class DemoReport:
    """Everything the demo measured (``--json`` writes :meth:`as_dict`)."""

    backend: str
    model: str
    n: int
    max_tokens: int | None
    seed: int
    rule: dict[str, Any]
    rule_text: str
    rounds: list[int]
    plain: MethodFigures
    certaindex: MethodFigures
    per_question: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def saved(self) -> float:
        return 1.0 - self.certaindex.tokens / self.plain.tokens if self.plain.tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "demo": "self-consistency: plain vs certaindex",
            "backend": self.backend,
            "source": self.source,
            "model": self.model,
            "questions": self.plain.questions,
            "n": self.n,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "rule": self.rule,
            "rule_text": self.rule_text,
            "rounds": self.rounds,
            "methods": {"plain": self.plain.as_dict(), "certaindex": self.certaindex.as_dict()},
            "saved": self.saved,
            "accuracy_delta": self.certaindex.accuracy - self.plain.accuracy,
            "per_question": self.per_question,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
        }


def is_correct(answer: str | None, gold: str) -> bool:
    """The answer equals the gold one under the library's normalisation and math equivalence."""
    return answer is not None and bool(default_equivalence()(answer, gold))


def _figures(
    name: str,
    label: str,
    questions: Sequence[DemoQuestion],
    results: Sequence[ProgramResult | None],
    wall_s: float,
) -> tuple[MethodFigures, list[bool]]:
    stops = {reason.value: 0 for reason in (StopReason.CONFIDENT, StopReason.HOPELESS, StopReason.CAP)}
    correct: list[bool] = []
    tokens = prompt = samples = failed = 0
    for question, result in zip(questions, results, strict=True):
        if result is None:
            failed += 1
            correct.append(False)
            continue
        correct.append(is_correct(result.answer, question.gold))
        tokens += result.tokens.generated
        prompt += result.tokens.prompt
        samples += len(result.answers)
        stops[result.stop_reason.value] = stops.get(result.stop_reason.value, 0) + 1
    figures = MethodFigures(
        name, label, len(questions), sum(correct), tokens, prompt, samples, wall_s, stops, failed
    )
    return figures, correct


# --------------------------------------------------------------------------------------- running


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
            from .replay import ReplayServer
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
    from .local import LocalLlamaServer

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


# --------------------------------------------------------------------------------------- output


def format_table(report: DemoReport) -> str:
    """The summary table (one row per method) and what the columns mean."""
    replay = report.backend == "replay"
    time_head = "GPU s*" if replay else "wall s"
    head = (
        f"{'method':<18} {'accuracy':>13} {'tokens':>9} {'saved':>6} {'samples/q':>9} {time_head:>7}"
        f" {'confident':>9} {'hopeless':>8} {'ran to n':>8}"
    )
    lines = [head, "-" * len(head)]
    for m in (report.plain, report.certaindex):
        saved = "-" if m is report.plain else f"{report.saved:.0%}"
        seconds = m.modelled_s if replay and m.modelled_s is not None else m.wall_s
        confident = m.stops.get(StopReason.CONFIDENT.value, 0)
        cut = m.stops.get(StopReason.HOPELESS.value, 0)
        full = m.stops.get(StopReason.CAP.value, 0)
        if m is report.plain:
            confident_s, cut_s = "-", "-"
        else:
            confident_s, cut_s = str(confident), str(cut)
        accuracy = f"{m.correct}/{m.questions} {m.accuracy:4.0%}"
        lines.append(
            f"{m.label:<18} {accuracy:>13} {m.tokens:>9,} {saved:>6} {m.samples / max(m.questions, 1):>9.1f}"
            f" {seconds:>7.1f} {confident_s:>9} {cut_s:>8} {full:>8}"
        )
    lines.append("")
    lines.append(
        f"tokens: generated tokens over all questions; saved: certaindex vs plain SC. certaindex rule: "
        f"{report.rule_text}."
    )
    if replay:
        lines.append(
            "* modelled GPU seconds of the replay engine's timing model (wall time is not the GPU's: "
            f"plain {report.plain.wall_s:.1f} s, certaindex {report.certaindex.wall_s:.1f} s here)."
        )
    failed = report.plain.failed + report.certaindex.failed
    if failed:
        lines.append(f"{failed} program(s) failed and count as wrong; the first: {report.errors[0]}")
    return "\n".join(lines)


def write_plot(report: DemoReport, path: str | Path) -> bool:
    """Save the figure (tokens, accuracy, stop reasons per method); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    methods = (report.plain, report.certaindex)
    labels = [m.label for m in methods]
    colours = ["#8c8c8c", "#1f77b4"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    ax = axes[0]
    bars = ax.bar(labels, [m.tokens / max(m.questions, 1) for m in methods], color=colours)
    ax.set_title("generated tokens per question")
    ax.bar_label(bars, labels=["", f"-{report.saved:.0%}"])
    ax = axes[1]
    bars = ax.bar(labels, [100 * m.accuracy for m in methods], color=colours)
    ax.bar_label(bars, labels=[f"{m.correct}/{m.questions}" for m in methods])
    ax.set_ylim(0, 105)
    ax.set_title("accuracy (%)")
    ax = axes[2]
    bottom = [0.0, 0.0]
    for reason, colour in (("confident", "#2ca02c"), ("hopeless", "#d62728"), ("cap", "#7f7f7f")):
        values = [float(m.stops.get(reason, 0)) for m in methods]
        name = {"cap": f"ran to n={report.n}"}.get(reason, reason)
        ax.bar(labels, values, bottom=bottom, color=colour, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("why each question stopped")
    ax.set_ylim(0, 1.3 * max(report.plain.questions, 1))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper center", fontsize=8, ncol=3)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"self-consistency on {report.model} ({report.backend}): {report.plain.questions} questions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
