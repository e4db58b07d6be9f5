"""Dynasor requests: self-consistency, best-of-N and Dynasor-CoT as runtime programs.

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

Sampling settings come from the request (``temperature``, ``top_p``, ``max_tokens`` or
``max_completion_tokens``, ``seed``, ``stop``; other fields go upstream as extra body fields). The
default temperature is 0.7 (sc, best-of-N) or 0.6 (cot). ``max_tokens`` is per sample for sc and
best-of-N, the chain's most tokens for cot.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse, Response

from .._exceptions import BudgetExhausted
from .._probe import PROBE_CLOSE, PROBE_SUFFIX
from ..algorithms import (
    ProgramContext,
    ProgramResult,
    RewardModel,
    StopReason,
    TokenKind,
    best_of_n,
    dynasor_cot,
    in_thinking,
    self_consistency,
)
from ..algorithms._dynasor_cot import CLOSE_THINK
from ..certainty import cluster_answers, get_extractor
from ..endpoints import Choice, Generation, Message, Prompt, SamplingParams
from . import _sse
from ._errors import ProxyError
from ._options import DynasorOptions
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
    saved: int
    dynasor: dict[str, Any]


class DynasorProgram:
    """The program body of one dynasor request (module docs)."""

    def __init__(self, request: DynasorRequest, reward_model: Callable[[], RewardModel]) -> None:
        self.request, self._reward_model = request, reward_model
        self.answer = Answer(request.kind, request.model)
        self.choices: list[Choice] = []  # every generated sample
        self.streamed: list[str] = []  # cot: chunks sent so far

    async def __call__(self, context: ProgramContext, run: Run) -> ProgramResult:
        request, options = self.request, self.request.options
        streaming = request.stream

        def progress(value: float, observations: int, answer: str | None) -> None:
            if streaming and options.progress:
                body = {"observations": observations, "certaindex": value, "answer": answer}
                run.send(self.answer.progress_chunk({**body, "tokens": context.usage.total}))

        def text(chunk: str) -> None:
            self.streamed.append(chunk)
            if streaming:
                run.send(self.answer.delta(chunk))

        self.choices = record_samples(
            context, prompt=request.prompt if request.kind == "completions" else None, on_report=progress
        )
        common: dict[str, Any] = {
            "context": context,
            "task": options.task,
            "system": None,
            "messages": request.messages,
        }
        try:
            if options.algorithm == "sc":
                result = await self_consistency(
                    request.question,
                    n=options.n,
                    detect=min(options.detect or 5, options.n),
                    rule=options.rule,
                    params=_with_default_temperature(request.params, 0.7),
                    **common,
                )
            elif options.algorithm == "best_of_n":
                result = await best_of_n(
                    request.question,
                    reward_model=self._reward_model(),
                    n=options.n,
                    detect=min(options.detect or 4, options.n),
                    aggregate=options.aggregate,
                    params=_with_default_temperature(request.params, 0.7),
                    **common,
                )
            else:
                chunk, window, most = options.cot_settings
                result = await dynasor_cot(
                    request.question,
                    chunk_tokens=chunk,
                    window=window,
                    max_tokens=request.max_tokens or most,
                    params=_with_default_temperature(
                        dataclasses.replace(request.params, max_tokens=None), 0.6
                    ),
                    on_text=text,
                    **common,
                )
        except BudgetExhausted:
            result = ProgramResult.best_so_far(context, StopReason.BUDGET)
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
        final = self._cot(result, info) if options.algorithm == "cot" else self._vote(result, choices, info)
        info["saved_tokens"] = final.saved
        return final

    def _vote(self, result: ProgramResult, choices: list[Choice], info: dict[str, Any]) -> Final:
        options, tokens = self.request.options, result.tokens
        extract = get_extractor(options.task)
        answers = [extract(c.text) for c in choices]
        winner: int | None = None
        best = result.details.get("best")
        if options.algorithm == "best_of_n" and options.aggregate == "max" and isinstance(best, int):
            winner = best if best < len(choices) else None
        if winner is None and result.answer is not None and answers:
            labels = cluster_answers([result.answer, *answers])
            winner = next((i for i, label in enumerate(labels[1:]) if label == labels[0]), None)
        if winner is None and choices:
            winner = 0  # no sample answered: the first one, as it is
        drawn = len(choices)
        saved = round((tokens.generated + tokens.reward) / drawn * (options.n - drawn)) if drawn else 0
        info.update(
            samples=drawn,
            max_samples=options.n,
            answers=answers,
            sample_tokens=[c.num_tokens for c in choices],
            winner=winner,
        )
        if winner is None:
            text = "" if result.answer is None else f"The answer is \\boxed{{{result.answer}}}."
            return Final(text, text, None, "stop", saved, info)
        choice = choices[winner]
        return Final(choice.text, choice.text, choice.reasoning, choice.finish_reason or "stop", saved, info)

    def _cot(self, result: ProgramResult, info: dict[str, Any]) -> Final:
        details, tokens = result.details, result.tokens
        chain = "".join(self.streamed)
        finished = bool(details.get("finished"))
        tail = ""
        if not finished:
            close = CLOSE_THINK if in_thinking(chain) else ""
            tail = close if result.answer is None else f"{close}{PROBE_SUFFIX}{result.answer}{PROBE_CLOSE}"
        most = self.request.max_tokens or self.request.options.cot_settings[2]
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


class DynasorRenderer:
    """A dynasor run's response: a JSON body, or the stream's end (module docs of :mod:`._responses`)."""

    def __init__(self, run: Run, program: DynasorProgram, errors: Callable[[BaseException], ProxyError]):
        self.run, self.program, self._errors = run, program, errors

    def _final(self, result: ProgramResult) -> Final:
        final: Final | None = self.run.state.get("final")
        return final if final is not None else self.program.finish(result)  # stopped from outside

    def whole(self, result: ProgramResult) -> Response:
        if self.program.request.stream:
            events = b"".join(self.tail(result))
            return Response(events, media_type=_sse.MEDIA_TYPE, headers=_sse.HEADERS)
        final = self._final(result)
        usage = usage_body(result.tokens, final.saved)
        body = self.program.answer.body(
            final.text, reasoning=final.reasoning, finish=final.finish, usage=usage, dynasor=final.dynasor
        )
        return JSONResponse(body)

    def tail(self, result: ProgramResult) -> list[bytes]:
        final, answer = self._final(result), self.program.answer
        events = []
        if final.unsent or final.reasoning or not answer.role_sent:
            events.append(answer.delta(final.unsent, reasoning=final.reasoning))
        events.append(answer.delta(finish=final.finish, dynasor=final.dynasor))
        if self.program.request.include_usage:
            events.append(answer.usage_chunk(usage_body(result.tokens, final.saved)))
        events.append(_sse.DONE)
        return events

    def error(self, exc: BaseException) -> ProxyError:
        return self._errors(exc)


def _with_default_temperature(params: SamplingParams, temperature: float) -> SamplingParams:
    return params if params.temperature is not None else dataclasses.replace(params, temperature=temperature)
