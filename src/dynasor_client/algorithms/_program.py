"""The program abstraction: what a reasoning program needs from the outside, and what it returns.

A reasoning program is an async algorithm for one query. Everything it needs comes through a
:class:`ProgramContext`: generation, its allowance (tokens and time left), reporting certaindex, and
asking whether to go on. :class:`StandaloneContext` implements the protocol over one endpoint; the
runtime (a later issue) implements it for many programs at once, so an algorithm never knows which
one it runs under. A program returns a :class:`ProgramResult`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .._log import new_id, program_scope
from ..certainty import Cap, Hopeless, HopelessCut, Observations, StopRule, TokenBudget
from ..certainty._rules import AnyOf
from ..endpoints import Endpoint, EndpointPool, Generation, Message, Prompt, SamplingParams, Usage


class TokenKind(StrEnum):
    """What tokens were spent on."""

    GENERATED = "generated"
    PROBE = "probe"
    REWARD = "reward"


class StopReason(StrEnum):
    """Why a program stopped."""

    CONFIDENT = "confident"  # its certaindex said the answer is settled
    CAP = "cap"  # the knob reached its maximum
    HOPELESS = "hopeless"  # still uncertain after many observations: cut
    BUDGET = "budget"  # its token allowance ran out
    DEADLINE = "deadline"  # its time ran out
    REJECTED = "rejected"  # admission control refused it: it could not meet its deadline


@dataclass(slots=True)
class TokenUsage:
    """Tokens a program used, by kind. Prompt tokens are counted for every kind of request."""

    prompt: int = 0
    cached_prompt: int = 0
    generated: int = 0
    probe: int = 0
    reward: int = 0

    @property
    def total(self) -> int:
        """Everything the server processed: uncached prompt plus generated, probe and reward tokens."""
        return self.prompt - self.cached_prompt + self.generated + self.probe + self.reward

    def add(self, kind: TokenKind, usage: Usage) -> None:
        self.prompt += usage.prompt_tokens
        self.cached_prompt += usage.cached_prompt_tokens or 0
        setattr(self, kind.value, getattr(self, kind.value) + usage.completion_tokens)

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt": self.prompt,
            "cached_prompt": self.cached_prompt,
            "generated": self.generated,
            "probe": self.probe,
            "reward": self.reward,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True)
class CertaindexPoint:
    """The program's certaindex after ``observations`` observations, ``elapsed_s`` after it started,
    and its answer at that point (what it returns if stopped there)."""

    observations: int
    value: float
    tokens: int
    elapsed_s: float
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class ProgramResult:
    """What a program returns."""

    answer: str | None
    confidence: float
    tokens: TokenUsage
    steps: int
    stop_reason: StopReason
    certaindex: tuple[CertaindexPoint, ...]
    program_id: str
    answers: tuple[str | None, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    """True when the program was stopped from outside (deadline, budget) and this is its best
    answer so far: the last one it reported."""

    @classmethod
    def best_so_far(cls, context: ProgramContext, reason: StopReason, **details: Any) -> ProgramResult:
        """The result of a program stopped from outside: its last reported answer and certaindex."""
        last = context.certaindex[-1] if context.certaindex else None
        return cls(
            answer=None if last is None else last.answer,
            confidence=0.0 if last is None else last.value,
            tokens=context.usage,
            steps=len(context.certaindex),
            stop_reason=reason,
            certaindex=tuple(context.certaindex),
            program_id=context.program_id,
            details=details,
            partial=True,
        )


class ProgramContext(Protocol):
    """Everything a program needs from the outside (see the module docs)."""

    program_id: str
    endpoint: Endpoint
    usage: TokenUsage
    certaindex: list[CertaindexPoint]

    async def generate(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        n: int = 1,
        params: SamplingParams | None = None,
        kind: TokenKind = TokenKind.GENERATED,
    ) -> Generation: ...

    def request_slot(self, n: int = 1) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for the right to send a request of ``n`` sequences, and hold it while inside:
        for calls made outside :meth:`generate` (raw pass-through) that scheduling must see."""
        ...

    def charge(self, kind: TokenKind, usage: Usage) -> None:
        """Count tokens spent outside :meth:`generate`."""
        ...

    def tokens_left(self) -> int | None: ...

    def seconds_left(self) -> float | None: ...

    def saturated(self) -> bool:
        """Whether a request sent now would wait behind other programs' requests (a runtime whose
        window is full): work sent ahead of need then only adds to the queue."""
        ...

    def bind(self, rule: StopRule) -> None:
        """The algorithm's stop rule; :meth:`stop_reason` combines it with budget and deadline."""
        ...

    def report(self, value: float, observations: int, answer: str | None = None) -> None:
        """The program's certaindex after ``observations`` observations and its answer so far."""
        ...

    def stop_reason(self, obs: Observations) -> StopReason | None: ...


def program_context(
    endpoint: Endpoint | None,
    context: ProgramContext | None,
    rule: StopRule,
    *,
    token_budget: int | None = None,
    deadline_s: float | None = None,
) -> ProgramContext:
    """The context an algorithm runs under: the one given, else a standalone one over ``endpoint``."""
    if context is not None:
        context.bind(rule)
        return context
    if endpoint is None:
        raise ValueError("give endpoint= (or a program context=)")
    return StandaloneContext(endpoint, rule, token_budget=token_budget, deadline_s=deadline_s)


def question_messages(
    question: str, system: str | None, messages: Sequence[Message] | None = None
) -> list[Message]:
    """The chat an algorithm asks: ``messages`` when given, else an optional system prompt + the question."""
    if messages is not None:
        return list(messages)
    return [
        *([{"role": "system", "content": system}] if system else []),
        {"role": "user", "content": question},
    ]


async def send(
    backend: Endpoint | EndpointPool,
    program_id: str,
    prompt: Prompt | None,
    messages: Sequence[Message] | None,
    n: int,
    params: SamplingParams | None,
) -> Generation:
    """One generation request of a program: a chat when ``messages`` are given, else a completion."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt= or messages=")
    with program_scope(program_id):  # sent as X-Program-Id: one program, one replica
        if messages is not None:
            return await backend.chat(messages, n=n, params=params)
        assert prompt is not None
        return await backend.complete(prompt, n=n, params=params)


def rule_stop_reason(rule: StopRule, obs: Observations) -> StopReason | None:
    """Which kind of rule fired: the first part of an ``a | b | ...`` rule that says stop."""
    if not rule(obs):
        return None
    for part in rule.rules if isinstance(rule, AnyOf) else (rule,):
        if part(obs):
            if isinstance(part, Cap):
                return StopReason.CAP
            if isinstance(part, Hopeless | HopelessCut):
                return StopReason.HOPELESS
            if isinstance(part, TokenBudget):
                return StopReason.BUDGET
            return StopReason.CONFIDENT
    return StopReason.CONFIDENT


class StandaloneContext:
    """The program context over one endpoint, for one program: ``rule`` decides when to stop,
    ``token_budget`` and ``deadline_s`` bound what it may spend (checked between steps)."""

    def __init__(
        self,
        endpoint: Endpoint,
        rule: StopRule,
        *,
        token_budget: int | None = None,
        deadline_s: float | None = None,
        program_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token_budget is not None and token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        self.endpoint, self.rule = endpoint, rule
        self.token_budget, self.deadline_s = token_budget, deadline_s
        self.program_id = program_id or new_id("prog")
        self.usage = TokenUsage()
        self.certaindex: list[CertaindexPoint] = []
        self._clock = clock
        self._started = clock()

    async def generate(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[Message] | None = None,
        n: int = 1,
        params: SamplingParams | None = None,
        kind: TokenKind = TokenKind.GENERATED,
    ) -> Generation:
        generation = await send(self.endpoint, self.program_id, prompt, messages, n, params)
        self.usage.add(kind, generation.usage)
        return generation

    @contextlib.asynccontextmanager
    async def request_slot(self, n: int = 1) -> AsyncIterator[None]:
        yield  # one program alone: nothing to wait for

    def charge(self, kind: TokenKind, usage: Usage) -> None:
        self.usage.add(kind, usage)

    def bind(self, rule: StopRule) -> None:
        self.rule = rule

    def tokens_left(self) -> int | None:
        return None if self.token_budget is None else self.token_budget - self.usage.total

    def seconds_left(self) -> float | None:
        return None if self.deadline_s is None else self.deadline_s - (self._clock() - self._started)

    def saturated(self) -> bool:
        return False  # one program alone shares nothing

    def report(self, value: float, observations: int, answer: str | None = None) -> None:
        elapsed = self._clock() - self._started
        self.certaindex.append(CertaindexPoint(observations, value, self.usage.total, elapsed, answer))

    def stop_reason(self, obs: Observations) -> StopReason | None:
        tokens, seconds = self.tokens_left(), self.seconds_left()
        if tokens is not None and tokens <= 0:
            return StopReason.BUDGET
        if seconds is not None and seconds <= 0:
            return StopReason.DEADLINE
        return rule_stop_reason(self.rule, obs)
