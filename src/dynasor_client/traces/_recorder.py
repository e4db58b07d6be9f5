"""Recording traces: many samples per question from any OpenAI-compatible endpoint.

:func:`record` (``dynasor-client record`` on the command line) asks an :class:`~..endpoints.Endpoint`
for ``samples`` answers to each question of a dataset (:func:`load_dataset`) and appends one
:class:`~._format.TraceQuestion` per question to a traces file, in the format :func:`load_traces`
reads back::

    items = load_dataset("../shared/data/datasets/gsm8k/test.jsonl")[:50]
    async with Endpoint("http://127.0.0.1:8000/v1") as endpoint:
        summary = await record(endpoint, items, "gsm8k-traces.jsonl", samples=8, top_logprobs=5)

What a sample records: its text exactly as generated (a reasoning field that the server returns
separately is put back inline as ``<think>...</think>``), the extracted answer (the extractor of
``task``), ``correct`` (graded against the gold answer), ``num_tokens``, ``finish_reason``, and the
chosen token's logprob per token (``logprobs``, on by default) plus the top-k alternatives
(``top_logprobs``) when the server gives them.

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
written in the order questions *finish*, which may differ from the dataset's order.

**Errors**: a question whose prompt does not fit the model's context (``ContextTooLong``) is skipped
with a warning and left out of the file (a later run tries it again); any other endpoint error
stops the run, keeping everything written so far.

**Reproducibility**: with a ``seed`` (default 0) each question gets its own seed derived from
``seed`` and the question id, and sample ``i`` uses that seed plus ``i``; a rerun asks for the same
samples, whatever the order or concurrency (servers may still differ by batching numerics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from .._exceptions import ContextTooLong, DynasorError
from .._log import get_logger
from .._probe import PROBE_MAX_TOKENS, PROBE_SUFFIX, probe_answer
from ..endpoints import (
    Choice,
    ContinuationMode,
    Endpoint,
    Generation,
    PrefillContinuation,
    SamplingParams,
    TextContinuation,
    TokenContinuation,
    TokenLogprob,
    Trajectory,
    split_reasoning,
)
from ._format import TraceQuestion, TraceSample, append_question, question_from_json

log = get_logger("dynasor_client.traces")

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DatasetError",
    "DatasetItem",
    "RecordError",
    "RecordOptions",
    "RecordSummary",
    "load_dataset",
    "question_seed",
    "record",
]

#: The system prompt of chat recordings unless another is given (``None`` or ``""``: no system message).
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

_SEED_MASK = 0x3FFFFFFF  # leaves room for seed + sample index below 2**31 (some servers take int32)
_GENERIC_STEMS = frozenset({"test", "train", "validation", "val", "dev", "data", "eval"})


class DatasetError(ValueError):
    """A dataset file that cannot be read: missing, not JSON lines, or of an unknown shape."""


class RecordError(DynasorError):
    """The output file cannot be used: unreadable, not a traces file, or recorded differently."""


# ---------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One question of a dataset: a stable id, the text the model sees, and the reference answer."""

    id: str
    question: str
    gold: str


def _number_text(value: Any) -> str:
    """``145.0`` -> ``"145"``; other values as written."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def _gsm8k_gold(answer: str) -> str:
    if "####" not in answer:
        return answer.strip()
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _join(body: str, question: str) -> str:
    body, question = body.strip(), question.strip()
    if not body:
        return question
    return f"{body} {question}" if body[-1] in ".?!:" else f"{body}. {question}"


_UNIT = re.compile(r"\s*\([^()]*\)\s*$")

#: (required fields, what the model sees, gold) in detection order; the first shape that fits wins.
_SHAPES: tuple[tuple[str, tuple[str, ...], Callable[[dict[str, Any]], tuple[str, str]]], ...] = (
    (
        "svamp",
        ("Body", "Question", "Answer"),
        lambda r: (_join(r["Body"], r["Question"]), _number_text(r["Answer"])),
    ),
    (
        "asdiv",
        ("body", "question", "answer"),
        # "9 (apples)" -> "9"; answers that are words ("Mrs. Hilt") stay as they are
        lambda r: (
            _join(r["body"], r["question"]),
            _UNIT.sub("", _number_text(r["answer"])) or str(r["answer"]),
        ),
    ),
    ("math", ("problem", "answer"), lambda r: (str(r["problem"]), _number_text(r["answer"]))),
    ("gsm8k", ("question", "answer"), lambda r: (str(r["question"]), _gsm8k_gold(_number_text(r["answer"])))),
    ("traces", ("question", "gold"), lambda r: (str(r["question"]), _number_text(r["gold"]))),
)
_ID_FIELDS = ("id", "unique_id", "ID")


def _dataset_name(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    folder = path.resolve().parent.name
    return folder if stem.lower() in _GENERIC_STEMS and folder else stem


def _row_id(row: dict[str, Any], name: str, index: int) -> str:
    for key in _ID_FIELDS:
        value = row.get(key)
        if isinstance(value, bool) or value is None or value == "":
            continue
        if isinstance(value, int | float):
            return f"{name}-{_number_text(value)}"
        return str(value)
    return f"{name}-{index}"


def load_dataset(path: str | Path) -> list[DatasetItem]:
    """Read a dataset file (JSON lines) into :class:`DatasetItem` s, in file order.

    Known shapes, detected per row by their fields: GSM8K (``question``, ``answer`` ending in
    ``#### N``: the gold is N without thousands separators), MATH500/AIME/AMC (``problem``,
    ``answer``), SVAMP (``Body``, ``Question``, ``Answer``), ASDiv (``body``, ``question``,
    ``answer`` like ``9 (apples)``: the gold is ``9``) and traces files (``question``, ``gold``).
    Numeric golds are written without a trailing ``.0``.

    Ids: the row's ``id``/``unique_id``/``ID`` field (a number is prefixed with the dataset name,
    ``aime24-60``), else ``{name}-{row index}`` (``gsm8k-0``, as in ``shared/data/traces``), where the
    name is the file's stem, or its folder's name for a stem like ``test``.

    Raises:
        DatasetError: the file is missing or unreadable, a line is not a JSON object, a row has an
            unknown shape (the message lists the known ones), ids repeat, or there is no row.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"dataset {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset {str(path)!r}: {exc}") from exc
    name = _dataset_name(path)
    items: list[DatasetItem] = []
    index = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not a JSON line ({exc.msg}); datasets are JSON lines") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for _shape, fields, read in _SHAPES:
            if all(row.get(f) is not None for f in fields):
                question, gold = read(row)
                break
        else:
            known = "; ".join(f"{shape}: {', '.join(fields)}" for shape, fields, _ in _SHAPES)
            raise DatasetError(
                f"{where}: unknown dataset shape (fields {sorted(row)}); known shapes: {known}"
            )
        if not question.strip():
            raise DatasetError(f"{where}: the question is empty")
        items.append(DatasetItem(_row_id(row, name, index), question, gold))
        index += 1
    if not items:
        raise DatasetError(f"dataset {str(path)!r} has no rows")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DatasetError(f"{path}: question id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return items


# ---------------------------------------------------------------------------------------- answers


def _answer_tools(
    task: str,
) -> tuple[Callable[[str], str | None], Callable[[str, str], bool], Callable[[], None]]:
    """(extractor, equivalence, close) for ``task``: the answers package, else a small fallback."""
    try:
        from ..certainty.answers import MathEquivalence, get_extractor
    except ImportError:  # pragma: no cover - the answers package is part of the library
        if task not in ("math", "gsm8k"):
            raise ValueError(f"unknown task {task!r}; known: gsm8k, math") from None
        return _fallback_extract, _fallback_equal, lambda: None
    extractor = get_extractor(task)
    equivalence = MathEquivalence()
    return extractor, equivalence, equivalence.close


def _fallback_extract(text: str) -> str | None:  # pragma: no cover - see _answer_tools
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 0, start + len("\\boxed{")
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                if depth == 0:
                    return text[i:j].strip() or None
                depth -= 1
    if (match := re.findall(r"####\s*([^\n]+)", text)) and match[-1].strip():
        return str(match[-1]).strip()
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return str(numbers[-1]) if numbers else None


def _fallback_equal(a: str, b: str) -> bool:  # pragma: no cover - see _answer_tools
    def norm(s: str) -> str:
        s = s.strip().strip("$").replace(",", "").replace(" ", "").lower()
        return s[:-2] if s.endswith(".0") else s

    return norm(a) == norm(b)


# ---------------------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """How :func:`record` samples, probes and writes (every field can be passed to it by keyword).

    ``system``: the system prompt (chat; ``None``/``""`` for none). ``completions``: send a raw
    completions prompt instead of chat messages: ``prompt_template`` with ``{question}`` (and
    optionally ``{system}``) replaced, by default the system prompt, a blank line, the question and
    a newline. ``logprobs``: record the chosen token's logprob; ``top_logprobs``: also the top-k
    alternatives (implies ``logprobs``). ``continuation``: how probed samples are continued chunk
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


def question_seed(seed: int, question_id: str) -> int:
    """The seed of one question: stable, from the run's seed and the question id (31-bit safe)."""
    digest = hashlib.sha256(f"{seed}\x00{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & _SEED_MASK


def _chunk_seed(sample_seed: int, chunk: int) -> int:
    digest = hashlib.sha256(f"{sample_seed}\x00chunk{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & _SEED_MASK


def _describe_source(model: str, base_url: str, options: RecordOptions) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or base_url  # never the user:password of the URL
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    route = "completions" if options.completions else "chat"
    probes = f", probes every {options.probe_every} tokens" if options.probe_every else ""
    return (
        f"dynasor-client record: {model} at {host}, {route}, temperature {options.temperature}, "
        f"max {options.max_tokens} tokens, {options.samples} samples, seed {options.seed}{probes}, "
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
    """The output file, opened for reading and truncation, locked against a second recorder."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("a+b")
    except OSError as exc:
        raise RecordError(f"cannot open {str(out)!r} for writing: {exc}") from exc
    with handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            pass
        else:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RecordError(f"another process is recording into {str(out)!r}") from None
        handle.seek(0)
        yield handle


# ---------------------------------------------------------------------------------------- sampling


def _full_text(choice: Choice) -> str:
    """The generated text exactly; reasoning from a separate field goes back inline in think tags.

    (Left unclosed when the sample was cut off before any answer: it never stopped thinking.)
    """
    raw = choice.raw_text
    if choice.reasoning is None or "<think>" in raw or "</think>" in raw:
        return raw
    cut = not raw and choice.finish_reason == "length"
    return f"<think>{choice.reasoning}" if cut else f"<think>{choice.reasoning}</think>{raw}"


@dataclass(slots=True)
class _Sampled:
    text: str
    num_tokens: int
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None
    probes: list[tuple[int, str | None]] | None = None


@dataclass(slots=True)
class _Recorder:
    endpoint: Endpoint
    options: RecordOptions
    extract: Callable[[str], str | None]
    equal: Callable[[str, str], bool]
    source: str
    tokens: int = 0
    probes: int = 0
    correct: int = 0
    graded: int = 0
    samples: int = 0
    _suffix_ids: list[int] | None = field(default=None)

    async def question(self, item: DatasetItem) -> TraceQuestion:
        opts = self.options
        seed = None if opts.seed is None else question_seed(opts.seed, item.id)
        if opts.probe_every:
            sampled, prompt_tokens = await self._probed(item, seed)
        else:
            sampled, prompt_tokens = await self._oneshot(item, seed)
        # Grading may run math-verify (up to a second per check): off the event loop.
        samples = await asyncio.to_thread(self._grade, item, sampled)
        self.tokens += sum(s.num_tokens for s in samples)
        self.samples += len(samples)
        self.graded += sum(s.correct is not None for s in samples)
        self.correct += sum(s.correct is True for s in samples)
        return TraceQuestion(
            id=item.id,
            question=item.question,
            gold=item.gold,
            samples=tuple(samples),
            prompt_tokens=prompt_tokens,
            source=self.source,
            system=opts.system or None,
        )

    def _grade(self, item: DatasetItem, sampled: list[_Sampled]) -> list[TraceSample]:
        out = []
        for s in sampled:
            _, answer_part = split_reasoning(s.text)
            # A sample cut off while still thinking has no final answer.
            answer = self.extract(answer_part) if answer_part.strip() else None
            correct = None if not item.gold else answer is not None and self.equal(answer, item.gold)
            lps = s.logprobs if self.options.wants_logprobs else None
            out.append(
                TraceSample(
                    answer=answer,
                    num_tokens=s.num_tokens,
                    text=s.text,
                    correct=correct,
                    token_logprobs=None if not lps else tuple(lp.logprob for lp in lps),
                    finish_reason=s.finish_reason,
                    top_logprobs=None
                    if not lps or self.options.top_logprobs == 0
                    else tuple(lp.top for lp in lps),
                    probes=None if s.probes is None else tuple(s.probes),
                )
            )
        return out

    async def _oneshot(self, item: DatasetItem, seed: int | None) -> tuple[list[_Sampled], int | None]:
        opts = self.options
        params = dataclasses.replace(opts.sampling(), seed=seed)
        if opts.completions:
            gen = await self.endpoint.complete(opts.prompt(item.question), n=opts.samples, params=params)
        else:
            gen = await self.endpoint.chat(opts.messages(item.question), n=opts.samples, params=params)
        sampled = [
            _Sampled(
                _full_text(c), c.num_tokens, c.finish_reason, None if c.logprobs is None else list(c.logprobs)
            )
            for c in gen.choices
        ]
        # One prompt per HTTP request: usage sums them when n was split.
        prompt_tokens = gen.usage.prompt_tokens // max(gen.requests, 1) or None
        return sampled, prompt_tokens

    async def _probed(self, item: DatasetItem, seed: int | None) -> tuple[list[_Sampled], int | None]:
        opts = self.options
        if opts.completions:
            root = await Trajectory.start(
                self.endpoint, opts.prompt(item.question), mode=opts.continuation, params=opts.sampling()
            )
        else:
            root = await Trajectory.start(
                self.endpoint,
                messages=opts.messages(item.question),
                mode=opts.continuation,
                params=opts.sampling(),
            )
        first_prompt_tokens: list[int] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(
                        self._probed_sample(
                            root.fork(), None if seed is None else seed + i, first_prompt_tokens
                        )
                    )
                    for i in range(opts.samples)
                ]
        except BaseExceptionGroup as group:
            raise _first_error(group) from None  # the caller sees EndpointError, not a group
        cont = root.continuation
        if isinstance(cont, TokenContinuation):
            prompt_tokens: int | None = len(cont.prompt_ids)
        else:
            prompt_tokens = first_prompt_tokens[0] if first_prompt_tokens and first_prompt_tokens[0] else None
        return [t.result() for t in tasks], prompt_tokens

    async def _probed_sample(
        self, trajectory: Trajectory, seed: int | None, prompt_tokens: list[int]
    ) -> _Sampled:
        opts = self.options
        assert opts.probe_every is not None
        logprobs: list[TokenLogprob] = []
        pending: list[tuple[int, asyncio.Task[str | None]]] = []
        chunk_index = 0
        # Probes run in this group alongside the next chunk; leaving it waits for the last probe.
        async with asyncio.TaskGroup() as tg:
            while not trajectory.finished and trajectory.num_tokens < opts.max_tokens:
                size = min(opts.probe_every, opts.max_tokens - trajectory.num_tokens)
                overrides: dict[str, object] = {}
                if seed is not None:
                    overrides["seed"] = _chunk_seed(seed, chunk_index)
                chunk = await trajectory.extend(size, **overrides)
                chunk_index += 1
                if not prompt_tokens:
                    prompt_tokens.append(chunk.usage.prompt_tokens)
                if chunk.choice.logprobs:
                    logprobs.extend(chunk.choice.logprobs)
                if chunk.num_tokens == 0:
                    break  # a server that stops without saying so: do not loop forever
                if not trajectory.finished and trajectory.num_tokens < opts.max_tokens:
                    send, echoes = await self._probe_sender(trajectory)
                    pending.append((trajectory.num_tokens, tg.create_task(_probe(send, echoes))))
        self.probes += len(pending)
        return _Sampled(
            trajectory.text,  # raw completions text: any think tags are inline already
            trajectory.num_tokens,
            trajectory.finish_reason,
            logprobs if opts.wants_logprobs else None,
            [(offset, task.result()) for offset, task in pending],
        )

    async def _probe_sender(self, trajectory: Trajectory) -> tuple[Callable[[], Awaitable[Generation]], bool]:
        """(a request probing the trajectory as it is now, whether its reply repeats the prompt).

        The prompt is built here, before the next chunk changes the trajectory.
        """
        cont = trajectory.continuation
        params = SamplingParams(max_tokens=PROBE_MAX_TOKENS, temperature=0.0)
        endpoint = self.endpoint
        if isinstance(cont, TokenContinuation):
            if self._suffix_ids is None:
                self._suffix_ids = await endpoint.tokenize(PROBE_SUFFIX)
            ids = [*cont.prompt_ids, *trajectory.token_ids, *self._suffix_ids]
            return (lambda: endpoint.complete(ids, params=params)), False
        if isinstance(cont, TextContinuation):
            prompt = cont.prompt + trajectory.text + PROBE_SUFFIX
            return (lambda: endpoint.complete(prompt, params=params)), False
        if isinstance(cont, PrefillContinuation):
            prefix = trajectory.text + PROBE_SUFFIX
            messages: list[dict[str, Any]] = [*cont.messages, {"role": "assistant", "content": prefix}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
            prefill = dataclasses.replace(params, extra_body=extra)
            return (lambda: endpoint.chat(messages, params=prefill)), cont.echoes
        raise TypeError(f"cannot probe a {type(cont).__name__}")  # pragma: no cover


async def _probe(send: Callable[[], Awaitable[Generation]], echoes: bool) -> str | None:
    """Send one probe and read its answer. A prompt that no longer fits the context: no answer."""
    try:
        generation = await send()
    except ContextTooLong as exc:
        log.warning("probe skipped, the prompt no longer fits: %s", exc)
        return None
    reply = generation.choices[0].raw_text
    if echoes and (at := reply.rfind(PROBE_SUFFIX)) >= 0:  # an assistant prefill repeated in the reply
        reply = reply[at + len(PROBE_SUFFIX) :]
    return probe_answer(reply)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


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
    extract, equal, close = _answer_tools(opts.task)
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
            rec = _Recorder(endpoint, opts, extract, equal, _describe_source(model, endpoint.base_url, opts))
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
    rec: _Recorder, todo: list[DatasetItem], out: Path, total: int, done: int, skipped: list[str]
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
        raise _first_error(group) from None
    finally:
        if bar is not None:
            bar.close()
    return written


def _progress(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="q", desc="recording", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------- command line


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``record`` subcommand's options (the endpoint options are added by the CLI)."""
    defaults = RecordOptions()
    parser.add_argument(
        "--dataset", required=True, help="JSON lines: gsm8k, math500, aime24, amc23, svamp, asdiv"
    )
    parser.add_argument("--out", required=True, help="traces file to append to (resumed if it exists)")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="samples per question")
    parser.add_argument("--limit", type=int, default=None, help="record only the first K questions")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="run seed (per-question seeds derive from it)"
    )
    parser.add_argument("--no-logprobs", action="store_true", help="do not record token logprobs")
    parser.add_argument(
        "--top-logprobs", type=int, default=0, metavar="K", help="also record the top K per token"
    )
    parser.add_argument(
        "--probe-every", type=int, default=None, metavar="T", help="probe the answer every T tokens"
    )
    parser.add_argument(
        "--continuation",
        choices=["auto", "tokens", "text", "prefill"],
        default="auto",
        help="how probed samples continue chunk by chunk (auto: the most exact the server supports)",
    )
    parser.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help='system prompt ("" for none)')
    parser.add_argument("--completions", action="store_true", help="send a raw completions prompt, not chat")
    parser.add_argument(
        "--prompt-template", default=None, help="completions prompt with {question} (and {system})"
    )
    parser.add_argument(
        "--task", default=defaults.task, help="answer extractor: math, gsm8k, multiple_choice, code"
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="questions in flight")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


async def record_command(args: argparse.Namespace) -> int:
    """Run ``dynasor-client record``: 0 when every question is recorded, 1 when some were skipped."""
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    items = load_dataset(args.dataset)
    if args.limit is not None:
        items = items[: args.limit]
    options = RecordOptions(
        samples=args.samples,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        logprobs=not args.no_logprobs,
        top_logprobs=args.top_logprobs,
        probe_every=args.probe_every,
        continuation=args.continuation,
        system=args.system or None,
        completions=args.completions,
        prompt_template=args.prompt_template,
        task=args.task,
        concurrency=args.concurrency,
        progress=not args.no_progress,
    )
    async with Endpoint(
        args.endpoint, model=args.model, api_key=args.api_key, timeout=args.timeout
    ) as endpoint:
        try:
            summary = await record(endpoint, items, args.out, options)
        except asyncio.CancelledError:
            print(
                f"interrupted: the questions recorded so far are in {args.out}; "
                "run the same command to resume",
                file=sys.stderr,
            )
            raise
    print(summary.describe())
    return 1 if summary.skipped else 0
