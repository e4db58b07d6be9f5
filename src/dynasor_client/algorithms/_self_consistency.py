"""Self-consistency driven by certaindex (the paper's first program).

sample a detect round; while the stop rule does not fire: sample the next round
answer = majority over answer-equivalence classes; certaindex = entropy H~ of those classes
(with a deadline, the next rounds are sent ahead and fitted to the time left: see ``_rounds``)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..certainty import (
    AnswerClusters,
    EntropyCertainty,
    Equivalence,
    Observations,
    StopRule,
    adaptive_consistency,
    cap,
    entropy_at_least,
    get_extractor,
    load_rule,
)
from ..endpoints import Message, SamplingParams
from ..program import ProgramContext, ProgramResult, StopReason, algorithm
from ._prompting import question_messages
from ._rounds import RoundPlan, RoundSchedule, chat_draw, round_sizes, rule_may_stop

DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def self_consistency_rule(
    rule: StopRule | Literal["paper", "adaptive"] | str | Path, n: int, detect: int
) -> StopRule:
    """The stop rule: a rule object, ``"paper"`` (H~ >= 0.7 at the detect round), ``"adaptive"``
    (Adaptive-Consistency, 0.95) or the path of a calibration JSON; the cap ``n`` always applies."""
    if isinstance(rule, StopRule):
        chosen = rule
    elif rule == "paper":
        chosen = entropy_at_least(0.7, at=[detect])
    elif rule == "adaptive":
        chosen = adaptive_consistency(0.95)
    else:
        chosen = load_rule(rule)
    return cap(n) | chosen


@algorithm
async def self_consistency(
    question: str,
    *,
    context: ProgramContext,
    n: int = 30,
    detect: int = 5,
    rounds: RoundSchedule = "auto",
    rule: StopRule | Literal["paper", "adaptive"] | str | Path = "paper",
    task: str = "math",
    equivalence: Equivalence | None = None,
    params: SamplingParams | None = None,
    system: str | None = DEFAULT_SYSTEM,
    messages: Sequence[Message] | None = None,
    lookahead: int | None = None,
) -> ProgramResult:
    """Sample answers in rounds until the stop rule fires (or ``n`` samples); return the majority.

    Alone: ``await as_program(self_consistency, question).run(endpoint)``. With a deadline,
    ``lookahead`` samples past the current check are sent ahead (default 2; 0 without a deadline)
    and rounds are fitted to the time left, unless the runtime's window is full
    (:class:`~dynasor_client.algorithms.RoundPlan`).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    stop_rule = self_consistency_rule(rule, n, detect)
    context.bind(stop_rule)
    chat = question_messages(question, system, messages)
    extract, clusters = get_extractor(task), AnswerClusters(equivalence)
    answers: list[str | None] = []
    tokens: list[int] = []
    reason = None
    obs = Observations.single([])  # the samples so far, rebuilt after each round
    plan = RoundPlan(
        round_sizes(rounds, n, detect, stop_rule),
        context,
        lookahead=lookahead,
        may_stop=rule_may_stop(stop_rule, context, lambda: obs),
    )
    sampling = params or SamplingParams(temperature=0.7)
    async with plan.rounds(chat_draw(context, chat, sampling)) as results:
        async for choices in results:
            for choice in choices:
                answer = extract(choice.text)
                answers.append(answer)
                tokens.append(choice.num_tokens)
                await asyncio.to_thread(clusters.add, answer)  # symbolic checks may block for a moment
            obs = Observations.single(clusters.labels, tokens=tokens)
            certainty = EntropyCertainty()(obs).value
            leader = clusters.majority()
            context.report(certainty, len(answers), None if leader is None else leader[1])
            reason = context.stop_reason(obs)
            if reason is not None:
                break
    if plan.out_of_time:
        reason = StopReason.DEADLINE
    winner = clusters.majority()
    return ProgramResult(
        answer=None if winner is None else winner[1],
        confidence=context.certaindex[-1].value if context.certaindex else 0.0,
        tokens=context.usage,
        steps=len(context.certaindex),
        stop_reason=reason or StopReason.CAP,  # every round ran: the cap
        certaindex=tuple(context.certaindex),
        program_id=context.program_id,
        answers=tuple(answers),
        partial=plan.out_of_time,
    )
