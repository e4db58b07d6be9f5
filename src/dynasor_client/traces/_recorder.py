"""Recording traces: many samples per question from any OpenAI-compatible endpoint.

:func:`record` (``dynasor-client record`` on the command line) asks an :class:`~..endpoints.Endpoint`
for ``samples`` answers to each question of a dataset (:func:`~._datasets.load_dataset`) and appends one
:class:`~._format.TraceQuestion` per question to a traces file, in the format :func:`load_traces`
reads back::

    items = load_dataset("../shared/data/datasets/gsm8k/test.jsonl")[:50]
    async with Endpoint("http://127.0.0.1:8000/v1") as endpoint:
        summary = await record(endpoint, items, "gsm8k-traces.jsonl", samples=8, top_logprobs=5)

What a sample records: its text exactly as generated (a reasoning field that the server returns
separately is put back inline as ``<think>...</think>``), the extracted answer (the extractor of
``task``), ``correct`` (graded against the gold answer), ``num_tokens``, ``finish_reason``, and the
chosen token's logprob and text per token (``logprobs``, on by default; ``tokens``, which the replay
server serves as its tokens) plus the top-k alternatives (``top_logprobs``) when the server gives
them, rounded to ``logprob_decimals`` decimals if asked (smaller files).

**Probes** (``probe_every=T``): each sample is generated in chunks of ``T`` tokens through a
:class:`~..endpoints.Trajectory` (token-exact on llama.cpp and vLLM), and after every chunk that
leaves the sample unfinished a probe asks for the answer so far: the prompt, the text so far and
:data:`~.._probe.PROBE_SUFFIX`, at temperature 0, at most :data:`~.._probe.PROBE_MAX_TOKENS` tokens.
The sample records ``(offset, answer)`` for offsets ``T, 2T, ...`` below its final length. A probe
runs concurrently with the decoding of the next chunk (both in one ``asyncio.TaskGroup``), so it
costs server capacity but little wall time. Chunked samples are seeded per chunk (from ``seed``,
the question id, the sample and the chunk), so they are reproducible but differ from the one-shot
samples of the same seed.

**Resuming**: each question is appended as one complete line and flushed to disk
(:func:`~._format.append_question`) as soon as all its samples are in; an interrupted run (Ctrl-C,
a crash, a lost server) loses only the questions in flight. Starting again with the same output
file skips the questions already there. A last line cut short by a crash is dropped (with a warning)
and the file is truncated to its last complete line first. With ``concurrency`` > 1 lines are
written in the order questions *finish*, which may differ from the dataset's order. A second
recorder on the same output file fails at once (a lock file, ``<out>.lock``, is kept beside it).

**Errors**: a question whose prompt does not fit the model's context (``ContextTooLong``) is skipped
with a warning and left out of the file (a later run tries it again); any other endpoint error
stops the run, keeping everything written so far.

**Reproducibility**: with a ``seed`` (default 0) each question gets its own seed derived from
``seed`` and the question id, and sample ``i`` uses that seed plus ``i``; a rerun asks for the same
samples, whatever the order or concurrency (servers may still differ by batching numerics).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

from .._exceptions import ContextTooLong, DynasorError
from .._log import get_logger
from ..endpoints import ContinuationMode, Endpoint, SamplingParams
from ._datasets import DatasetItem
from ._format import append_question, question_from_json
from ._sampling import QuestionSampler, answer_tools, first_error

log = get_logger("dynasor_client.traces")

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "RecordError",
    "RecordOptions",
    "RecordSummary",
    "record",
]

#: The system prompt of chat recordings unless another is given (``None`` or ``""``: no system message).
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class RecordError(DynasorError):
    """The output file cannot be used: unreadable, not a traces file, or recorded differently."""


# ---------------------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """How :func:`record` samples, probes and writes (every field can be passed to it by keyword).

    ``system``: the system prompt (chat; ``None``/``""`` for none). ``completions``: send a raw
    completions prompt instead of chat messages: ``prompt_template`` with ``{question}`` (and
    optionally ``{system}``) replaced, by default the system prompt, a blank line, the question and
    a newline. ``logprobs``: record the chosen token's logprob; ``top_logprobs``: also the top-k
    alternatives (implies ``logprobs``). ``logprob_decimals``: round every recorded logprob to that
    many decimals (None: as the server sent them; 4 shrinks a top-5 file to about half, for test
    data). ``continuation``: how probed samples are continued chunk
    by chunk (:class:`~..endpoints.Trajectory`; ``auto`` picks the most exact the server supports).
    ``seed``: None sends no seed. ``concurrency``: questions in
    flight at once (each sends ``samples`` samples).
    """

    samples: int = 8
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float | None = None
    seed: int | None = 0
    logprobs: bool = True
    top_logprobs: int = 0
    logprob_decimals: int | None = None
    probe_every: int | None = None
    continuation: ContinuationMode = "auto"
    system: str | None = DEFAULT_SYSTEM_PROMPT
    completions: bool = False
    prompt_template: str | None = None
    task: str = "math"
    concurrency: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "samples": self.samples >= 1,
            "max_tokens": self.max_tokens >= 1,
            "temperature": self.temperature >= 0 and math.isfinite(self.temperature),
            "top_logprobs": self.top_logprobs >= 0,
            "logprob_decimals": self.logprob_decimals is None or self.logprob_decimals >= 0,
            "probe_every": self.probe_every is None or self.probe_every >= 1,
            "continuation": self.continuation in ("auto", "tokens", "text", "prefill"),
            "concurrency": self.concurrency >= 1,
            "top_p": self.top_p is None or 0 < self.top_p <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")
        if self.prompt_template is not None and "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {question}")

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            logprobs=self.wants_logprobs,
            top_logprobs=self.top_logprobs,
        )

    def prompt(self, question: str) -> str:
        """The completions prompt of ``question`` (``completions=True``)."""
        system = self.system or ""
        if self.prompt_template is None:
            return f"{system}\n\n{question}\n" if system else f"{question}\n"
        return self.prompt_template.replace("{system}", system).replace("{question}", question)

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat messages of ``question``."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": question}]


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What one :func:`record` call did.

    ``recorded``: questions written by this call; ``already_recorded``: dataset questions found in
    the file at the start (skipped); ``skipped``: ids left out because their prompt was too long
    (a rerun tries them again). ``tokens``: generated sample tokens (probes not counted);
    ``correct``/``graded``: samples judged correct / samples with a verdict.
    """

    out: Path
    total: int
    recorded: int
    already_recorded: int
    skipped: tuple[str, ...]
    samples: int
    tokens: int
    probes: int
    correct: int
    graded: int
    elapsed_s: float

    def describe(self) -> str:
        rate = f"{self.tokens / self.elapsed_s:.0f} tokens/s" if self.elapsed_s > 0 else ""
        acc = f"; {self.correct}/{self.graded} samples correct" if self.graded else ""
        lines = [
            f"recorded {self.recorded} questions ({self.samples} samples, {self.tokens} tokens, "
            f"{self.probes} probes) in {self.elapsed_s:.1f} s ({rate}){acc} -> {self.out}",
            f"{self.already_recorded} of {self.total} questions were already there",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} (prompt too long): {', '.join(self.skipped[:10])}")
        return "\n".join(lines)


def _describe_source(model: str, base_url: str, options: RecordOptions) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or base_url  # never the user:password of the URL
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    route = "completions" if options.completions else "chat"
    extra = f", probes every {options.probe_every} tokens" if options.probe_every else ""
    if options.top_logprobs:
        extra += f", top {options.top_logprobs} logprobs"
    if options.logprob_decimals is not None:
        extra += f", logprobs rounded to {options.logprob_decimals} decimals"
    return (
        f"dynasor-client record: {model} at {host}, {route}, temperature {options.temperature}, "
        f"max {options.max_tokens} tokens, {options.samples} samples, seed {options.seed}{extra}, "
        f"{datetime.now(UTC).date().isoformat()}"
    )


# ---------------------------------------------------------------------------------------- the out file


def _read_recorded(out: Path, handle: IO[bytes]) -> dict[str, int]:
    """Ids in ``out`` and their sample counts; a truncated last line is cut off (with a warning)."""
    data = handle.read()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning(
            "%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
            out,
            len(data) - keep,
        )
        handle.truncate(keep)
        handle.flush()
        data = data[:keep]
    recorded: dict[str, int] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            question = question_from_json(json.loads(line))
        except (ValueError, TypeError) as exc:
            raise RecordError(
                f"{out}:{number} is not a trace line ({exc}); is --out the right file? Nothing was changed."
            ) from None
        recorded[question.id] = len(question.samples)
    return recorded


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[IO[bytes]]:
    """The output file, opened for reading and truncation, locked against a second recorder.

    The lock is a file lock on ``<out>.lock`` beside it, taken without waiting: a second recorder
    on the same file fails at once. The lock file stays when the run ends (removing it would let
    two recorders lock two different files of the same name).
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("a+b")
    except OSError as exc:
        raise RecordError(f"cannot open {str(out)!r} for writing: {exc}") from exc
    lock = FileLock(out.with_name(out.name + ".lock"), timeout=0)
    with handle:
        try:
            lock.acquire()
        except Timeout:
            raise RecordError(f"another process is recording into {str(out)!r}") from None
        except OSError as exc:
            raise RecordError(f"cannot lock {str(out)!r} against a second recorder: {exc}") from exc
        try:
            handle.seek(0)
            yield handle
        finally:
            lock.release()


# ---------------------------------------------------------------------------------------- record


async def record(
    endpoint: Endpoint,
    items: Sequence[DatasetItem],
    out: str | Path,
    options: RecordOptions | None = None,
    **overrides: Any,
) -> RecordSummary:
    """Record ``samples`` samples of every item not yet in ``out`` and append them there.

    Options come from ``options`` and/or keywords (``samples=8, probe_every=256``): see
    :class:`RecordOptions` and the module docs for resuming, probes, ordering and errors.

    Raises:
        RecordError: ``out`` is not a traces file, was recorded with another number of samples,
            or is being written by another recorder.
        EndpointError: a request failed for good (everything recorded before is kept).
    """
    opts = dataclasses.replace(options or RecordOptions(), **overrides)
    out = Path(out)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    started = time.perf_counter()
    extract, equal, close = answer_tools(opts.task)
    try:
        with _locked(out) as handle:
            recorded = _read_recorded(out, handle)
            mismatched = sorted({n for n in recorded.values() if n != opts.samples})
            if mismatched:
                raise RecordError(
                    f"{out} holds questions with {', '.join(map(str, mismatched))} samples each, and this "
                    f"run records {opts.samples}: pass the same --samples to resume, or another output file"
                )
            known = set(ids)
            strangers = [qid for qid in recorded if qid not in known]
            if strangers:
                log.warning("%s holds %d questions not among these items (kept)", out, len(strangers))
            todo = [item for item in items if item.id not in recorded]
            # Nothing to do: the server is not even asked for its model name.
            model = await endpoint.model_name() if todo else ""
            rec = QuestionSampler(
                endpoint, opts, extract, equal, _describe_source(model, endpoint.base_url, opts)
            )
            skipped: list[str] = []
            written = await _run(rec, todo, out, len(items), len(items) - len(todo), skipped) if todo else 0
    finally:
        close()
    return RecordSummary(
        out=out,
        total=len(items),
        recorded=written,
        already_recorded=len(items) - len(todo),
        skipped=tuple(skipped),
        samples=rec.samples,
        tokens=rec.tokens,
        probes=rec.probes,
        correct=rec.correct,
        graded=rec.graded,
        elapsed_s=time.perf_counter() - started,
    )


async def _run(
    rec: QuestionSampler, todo: list[DatasetItem], out: Path, total: int, done: int, skipped: list[str]
) -> int:
    bar = _progress(total, done, rec.options.progress)
    queue = iter(todo)
    written = 0

    async def worker() -> None:
        nonlocal written
        for item in queue:  # one iterator shared by the workers: each item is taken once
            try:
                question = await rec.question(item)
            except ContextTooLong as exc:
                log.warning("question %s skipped: %s", item.id, exc)
                skipped.append(item.id)
                continue
            append_question(out, question)  # synchronous: a cancellation never cuts a line
            written += 1
            if bar is not None:
                bar.set_postfix(tokens=rec.tokens, refresh=False)
                bar.update(1)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(rec.options.concurrency, len(todo))):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        if bar is not None:
            bar.close()
    return written


def _progress(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="q", desc="recording", dynamic_ncols=True)
