"""Dynasor requests: every algorithm of the registry (:mod:`._registry`) as a runtime program.

The algorithm runs under the runtime's program context, watched by :func:`record_samples`, which keeps
every generated sample (the winner's full text becomes the response content), reports progress, and
on ``/v1/completions`` sends the client's prompt instead of the algorithm's chat.

- **sc / best-of-N** cannot know the winner before the vote: the content (the full text of the
  first sample whose answer is the winning answer; best-of-N ``"max"``: the best-scored sample) is
  sent when the program ends, preceded in a stream by progress chunks if ``progress`` was asked.
- **cot** streams the chain of thought chunk by chunk as it is decoded; when the probes agree the
  chunk in flight is cancelled and the content ends with the forced answer, in the probe's words
  (``... **Final Answer**\\n\\n\\[ \\boxed{ANSWER}\\n\\]``), after closing ``</think>`` if needed.
  A chain that finishes on its own ends as the model wrote it.
- **rebase / mcts** (tree search) answer ``The answer is \\boxed{ANSWER}.`` once the search ends
  (their steps are not kept as samples); the ``dynasor`` field lists every leaf's answer and
  reward. They report no saved tokens (no baseline to compare with).
- **tools**: sc and best-of-N vote over tool calls too: a sample that calls tools answers its calls
  (function names and canonical JSON arguments), and when such an answer wins, the response is the
  first winning sample's ``tool_calls`` with ``finish_reason: "tool_calls"``. Cot, rebase and mcts
  build their own chat and continue it as text: a request with ``tools`` is refused (400).
- **deadline**: a program whose deadline passes before it has anything to answer (no content, no
  tool call) is answered 504 ``deadline_exceeded``, as a pass-through is; otherwise its best answer
  so far, ``partial``. The ``X-Dynasor-*`` headers (:meth:`DynasorRenderer.headers`) say which.

Sampling settings come from the request (``temperature``, ``top_p``, ``max_tokens`` or
``max_completion_tokens``, ``seed``, ``stop``; other fields go upstream as extra body fields). The
default temperature is 0.7 (sc, best-of-N, rebase, mcts) or 0.6 (cot). ``max_tokens`` is per sample
for sc and best-of-N, the chain's most tokens for cot; tree search steps are ``step_tokens`` long.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from starlette.responses import JSONResponse, Response

from .._exceptions import BudgetExhausted, EndpointError
from .._probe import CLOSE_THINK, PROBE_CLOSE, PROBE_SUFFIX, in_thinking
from ..algorithms import Prompting, RewardModel
from ..certainty import cluster_answers, get_extractor
from ..endpoints import Choice, Generation, Message, Prompt, SamplingParams, ToolCall, tool_calls_key
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind
from . import _sse
from ._errors import ProxyError
from ._options import DynasorOptions
from ._registry import BestOfNOptions, CotOptions, Inputs, Reward, SamplingOptions
from ._responses import Answer, usage_body
from ._run import Run

Kind = Literal["completions", "chat"]


@dataclass(frozen=True, slots=True)
class DynasorRequest:
    """A request for a dynasor program, parsed from the client's body."""

    kind: Kind
    options: DynasorOptions
    model: str  # as the client named it (echoed in the response)
    question: str
    messages: list[Message] | None
    prompt: Prompt | None
    params: SamplingParams
    max_tokens: int | None
    stream: bool
    include_usage: bool


def record_samples(
    context: ProgramContext,
    *,
    prompt: Prompt | None,
    on_report: Callable[[float, int, str | None], None],
) -> list[Choice]:
    """Watch a program on its context: every generated sample is kept (returned list), every report
    goes to ``on_report``, and on ``/v1/completions`` the client's ``prompt`` is sent instead of the
    algorithm's chat (module docs)."""
    choices: list[Choice] = []

    def generated(kind: TokenKind, generation: Generation) -> None:
        if kind is TokenKind.GENERATED:
            choices.extend(generation.choices)

    def client_prompt(
        sent: Prompt | None, messages: Sequence[Message] | None
    ) -> tuple[Prompt | None, Sequence[Message] | None]:
        return (prompt, None) if messages is not None else (sent, messages)

    context.watch(
        on_generation=generated,
        on_report=lambda point: on_report(point.value, point.observations, point.answer),
        rewrite=client_prompt if prompt is not None else None,
    )
    return choices


@dataclass(frozen=True, slots=True)
class Final:
    """What the client gets for a finished program."""

    text: str  # the whole content
    unsent: str  # the part of it not streamed yet
    reasoning: str | None
    finish: str
    saved: int  # tokens saved against the baseline (never negative)
    dynasor: dict[str, Any]
    tool_calls: tuple[ToolCall, ...] = ()
    extra: int = 0  # tokens spent beyond the baseline (never negative)

    @property
    def empty(self) -> bool:
        """Nothing to answer: no content and no tool call."""
        return not self.text.strip() and not self.tool_calls


class DynasorProgram:
    """The program body of one dynasor request (module docs)."""

    def __init__(self, request: DynasorRequest, reward_model: Callable[[Reward | None], RewardModel]) -> None:
        self.request, self._reward_model = request, reward_model
        self.answer = Answer(request.kind, request.model)
        self.choices: list[Choice] = []  # every generated sample
        self.streamed: list[str] = []  # cot: chunks sent so far

    async def __call__(self, context: ProgramContext, run: Run) -> ProgramResult:
        request, options = self.request, self.request.options
        entry, settings = options.entry, options.settings
        assert entry is not None and settings is not None  # a dynasor request names an algorithm
        streaming = request.stream

        def progress(value: float, observations: int, answer: str | None) -> None:
            if streaming and settings.progress:
                body = {"observations": observations, "certaindex": value, "answer": answer}
                run.send(self.answer.progress_chunk({**body, "tokens": context.usage.total}))

        def text(chunk: str) -> None:
            self.streamed.append(chunk)
            if streaming:
                run.send(self.answer.delta(chunk))

        self.choices = record_samples(
            context, prompt=request.prompt if request.kind == "completions" else None, on_report=progress
        )
        inputs = Inputs(request.params, request.max_tokens, self._reward_model, text)
        try:
            result = await entry.algorithm(
                request.question,
                context=context,
                prompting=Prompting(system=None, messages=request.messages, task=settings.task),
                **entry.arguments(settings, inputs),
            )
        except BudgetExhausted:
            result = ProgramResult.best_so_far(context, StopReason.BUDGET)
        if result.stop_reason is StopReason.BUDGET and context.usage.total == 0:
            raise ProxyError(  # refused before anything was generated: the client gets a 429
                "the token budget (the API key's, the proxy's or dynasor.token_budget) does not cover "
                "a single request of this program",
                status=429,
                type="insufficient_quota",
                code="insufficient_quota",
            )
        run.state["final"] = await asyncio.to_thread(self.finish, result)
        return result

    # ------------------------------------------------------------------ the answer

    def finish(self, result: ProgramResult) -> Final:
        """The content, finish reason, saved tokens and ``dynasor`` field of a result."""
        options = self.request.options
        choices = self.choices
        info: dict[str, Any] = {
            "algorithm": options.algorithm,
            "answer": result.answer,
            "confidence": result.confidence,
            "stop_reason": str(result.stop_reason),
            "steps": result.steps,
            "certaindex": [[p.observations, p.value] for p in result.certaindex],
            "partial": result.partial,
            "program_id": result.program_id,
        }
        answer = options.entry.answer if options.entry is not None else "vote"
        if answer == "chain":
            final = self._cot(result, info)
        elif answer == "tree":
            final = self._tree(result, info)
        else:
            final = self._vote(result, choices, info)
        # The estimate is signed (probes on a chain that ended anyway cost more than they saved):
        # what was saved and what was spent beyond the baseline are reported apart, never negative.
        final = replace(final, saved=max(final.saved, 0), extra=max(-final.saved, 0))
        info.update(saved_tokens=final.saved, extra_tokens=final.extra)
        return final

    def _vote(self, result: ProgramResult, choices: list[Choice], info: dict[str, Any]) -> Final:
        settings, tokens = self.request.options.settings, result.tokens
        assert isinstance(settings, SamplingOptions)
        extract = get_extractor(settings.task)
        answers = [tool_calls_key(c.tool_calls) or extract(c.text) for c in choices]
        winner: int | None = None
        best = result.details.get("best")
        if isinstance(settings, BestOfNOptions) and settings.aggregate == "max" and isinstance(best, int):
            winner = best if best < len(choices) else None
        if winner is None and result.answer is not None and answers:
            labels = cluster_answers([result.answer, *answers])
            winner = next((i for i, label in enumerate(labels[1:]) if label == labels[0]), None)
        if winner is None and choices:
            winner = 0  # no sample answered: the first one, as it is
        drawn = len(choices)
        saved = round((tokens.generated + tokens.reward) / drawn * (settings.n - drawn)) if drawn else 0
        info.update(
            samples=drawn,
            max_samples=settings.n,
            answers=answers,
            sample_tokens=[c.num_tokens for c in choices],
            winner=winner,
        )
        if winner is None:
            text = "" if result.answer is None else f"The answer is \\boxed{{{result.answer}}}."
            return Final(text, text, None, "stop", saved, info)
        choice = choices[winner]
        if choice.tool_calls:  # a call without an id (some servers) gets one: the client answers it by id
            calls = tuple(replace(c, id=c.id or f"call_{uuid.uuid4().hex[:24]}") for c in choice.tool_calls)
            return Final(choice.text, choice.text, choice.reasoning, "tool_calls", saved, info, calls)
        return Final(choice.text, choice.text, choice.reasoning, choice.finish_reason or "stop", saved, info)

    def _cot(self, result: ProgramResult, info: dict[str, Any]) -> Final:
        details, tokens = result.details, result.tokens
        chain = "".join(self.streamed)
        finished = bool(details.get("finished"))
        tail = ""
        if not finished:
            close = CLOSE_THINK if in_thinking(chain) else ""
            tail = close if result.answer is None else f"{close}{PROBE_SUFFIX}{result.answer}{PROBE_CLOSE}"
        settings = self.request.options.settings
        assert isinstance(settings, CotOptions)
        most = self.request.max_tokens or settings.cot_settings[2]
        generated = int(details.get("generated_tokens", tokens.generated))
        # The baseline decodes to max_tokens, unless the chain ended first (finished, context full).
        ran_out = finished or bool(details.get("context_full"))
        saved = -tokens.probe if ran_out else most - generated - tokens.probe
        probes = details.get("probes", [])
        info.update(
            samples=1,
            max_samples=1,
            answers=[p[1] for p in probes] if probes else list(result.answers),
            winner=0,
            probes=len(probes),
            generated_tokens=generated,
            forced=not finished,
        )
        return Final(chain + tail, tail, None, "stop", saved, info)

    def _tree(self, result: ProgramResult, info: dict[str, Any]) -> Final:
        details = result.details
        rewards = details.get("leaf_rewards", details.get("terminal_rewards", []))
        info.update(
            samples=len(result.answers),
            answers=list(result.answers),
            rewards=[None if math.isnan(r) else r for r in rewards],  # NaN (unscored) is not JSON
            **{key: details[key] for key in ("depth", "nodes", "iterations") if key in details},
        )
        text = "" if result.answer is None else f"The answer is \\boxed{{{result.answer}}}."
        return Final(text, text, None, "stop", 0, info)


class DynasorRenderer:
    """A dynasor run's response: a JSON body, or the stream's end (module docs of :mod:`._responses`)."""

    def __init__(self, run: Run, program: DynasorProgram, errors: Callable[[BaseException], ProxyError]):
        self.run, self.program, self._errors = run, program, errors

    def _final(self, result: ProgramResult) -> Final:
        final: Final | None = self.run.state.get("final")
        if final is None:  # stopped from outside (the deadline): made once, kept for the run's end
            final = self.run.state["final"] = self.program.finish(result)
        return final

    def whole(self, result: ProgramResult) -> Response:
        refused = self.refusal(result)
        if refused is not None:
            return refused.response()
        headers = self.headers(result)
        if self.program.request.stream:
            events = b"".join(self.tail(result))
            return Response(events, media_type=_sse.MEDIA_TYPE, headers={**_sse.HEADERS, **headers})
        final = self._final(result)
        body = self.program.answer.body(
            final.text,
            reasoning=final.reasoning,
            finish=final.finish,
            usage=usage_body(result.tokens, final.saved, final.extra),
            dynasor=final.dynasor,
            tool_calls=final.tool_calls,
        )
        return JSONResponse(body, headers=headers)

    def tail(self, result: ProgramResult) -> list[bytes]:
        refused = self.refusal(result)
        if refused is not None:  # the stream has started: its end is the error
            return [_sse.event(refused.body())]
        final, answer = self._final(result), self.program.answer
        events = []
        if final.unsent or final.reasoning or not answer.role_sent:
            events.append(answer.delta(final.unsent, reasoning=final.reasoning))
        if final.tool_calls:
            events.append(answer.delta(tool_calls=final.tool_calls))
        events.append(answer.delta(finish=final.finish, dynasor=final.dynasor))
        if self.program.request.include_usage:
            events.append(answer.usage_chunk(usage_body(result.tokens, final.saved, final.extra)))
        events.append(_sse.DONE)
        return events

    def headers(self, result: ProgramResult | None) -> dict[str, str]:
        """``X-Dynasor-*`` response headers: the technique, and for a finished ``result`` whether
        the answer is partial, why the program stopped and the tokens saved (and spent beyond the
        baseline). A stream that started before the end (cot, progress chunks) has only the first:
        the rest is in its final chunk's ``dynasor`` field."""
        headers = {"X-Dynasor-Technique": str(self.program.request.options.algorithm)}
        if result is not None:
            final = self._final(result)
            headers.update(
                {
                    "X-Dynasor-Partial": "true" if result.partial else "false",
                    "X-Dynasor-Stop-Reason": str(result.stop_reason),
                    "X-Dynasor-Saved-Tokens": str(final.saved),
                    "X-Dynasor-Extra-Tokens": str(final.extra),
                }
            )
        return headers

    def refusal(self, result: ProgramResult) -> ProxyError | None:
        """The error answered instead of ``result``: a deadline that passed before the program had
        anything to answer is 504, as for a pass-through (None: answer the result)."""
        if result.stop_reason is not StopReason.DEADLINE or not self._final(result).empty:
            return None
        return ProxyError(
            "the request's deadline (X-Dynasor-Deadline-S or dynasor.deadline_s) passed before the "
            f"technique ({self.program.request.options.algorithm}) had an answer; its upstream requests "
            "were aborted",
            status=504,
            type="timeout_error",
            code="deadline_exceeded",
            headers=self.headers(result),
        )

    def error(self, exc: BaseException) -> ProxyError:
        return self._errors(failure(exc))


def failure(exc: BaseException) -> BaseException:
    """The exception a failed program is answered for. An exception group (an algorithm's task
    group: parallel samples, judge calls) stands for its first upstream or proxy error, else its
    first leaf that is not a cancellation; an upstream answer that is not UTF-8 is a 502."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        exc = next(
            (e for e in leaves if isinstance(e, ProxyError | EndpointError)),
            next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0]),
        )
    if isinstance(exc, UnicodeDecodeError):
        return _sse.invalid_utf8("an answer")
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
