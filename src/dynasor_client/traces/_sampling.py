"""Sampling one question for the recorder: its samples (one request, or chunk by chunk with probes),
each graded against the gold answer, as a :class:`~._format.TraceQuestion`; the per-question seeds."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._exceptions import ContextTooLong
from .._log import get_logger
from .._probe import PROBE_MAX_TOKENS, PROBE_SUFFIX, probe_answer
from ..endpoints import (
    Choice,
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
from ._datasets import DatasetItem
from ._format import TraceQuestion, TraceSample

if TYPE_CHECKING:
    from ._recorder import RecordOptions

log = get_logger("dynasor_client.traces")

__all__ = ["QuestionSampler", "answer_tools", "first_error", "question_seed"]

_SEED_MASK = 0x3FFFFFFF  # leaves room for seed + sample index below 2**31 (some servers take int32)


def question_seed(seed: int, question_id: str) -> int:
    """The seed of one question: stable, from the run's seed and the question id (31-bit safe)."""
    digest = hashlib.sha256(f"{seed}\x00{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & _SEED_MASK


def _chunk_seed(sample_seed: int, chunk: int) -> int:
    digest = hashlib.sha256(f"{sample_seed}\x00chunk{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & _SEED_MASK


# ---------------------------------------------------------------------------------------- answers


def answer_tools(
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


def _fallback_extract(text: str) -> str | None:  # pragma: no cover - see answer_tools
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


def _fallback_equal(a: str, b: str) -> bool:  # pragma: no cover - see answer_tools
    def norm(s: str) -> str:
        s = s.strip().strip("$").replace(",", "").replace(" ", "").lower()
        return s[:-2] if s.endswith(".0") else s

    return norm(a) == norm(b)


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
class QuestionSampler:
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
            if lps and self.options.logprob_decimals is not None:
                lps = _rounded(lps, self.options.logprob_decimals)
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
                    tokens=None if not lps else tuple(lp.token for lp in lps),
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
            raise first_error(group) from None  # the caller sees EndpointError, not a group
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


def _rounded(logprobs: list[TokenLogprob], decimals: int) -> list[TokenLogprob]:
    """``logprobs`` with every value (chosen and alternatives) rounded to ``decimals`` decimals."""
    return [
        dataclasses.replace(
            lp, logprob=round(lp.logprob, decimals), top=tuple((t, round(v, decimals)) for t, v in lp.top)
        )
        for lp in logprobs
    ]


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group
