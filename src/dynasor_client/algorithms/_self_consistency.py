"""Self-consistency driven by certaindex (the paper's first program).

sample a detect round; while the stop rule does not fire: sample the next round
answer = majority over answer-equivalence classes; certaindex = entropy H~ of those classes
(with a deadline, the next rounds are sent ahead and fitted to the time left; racing reads the
samples as they finish: see ``_rounds``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..certainty import (
    EntropyCertainty,
    StopRule,
    adaptive_consistency,
    cap,
    entropy_at_least,
    load_rule,
)
from ..endpoints import SamplingParams
from ..program import ProgramContext, ProgramResult, StopReason, algorithm
from ._prompting import DEFAULT_PROMPTING, Prompting
from ._rounds import Reading, RoundSchedule, chat_draw
from ._samples import Samples, sampling_plan


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
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
    lookahead: int | None = None,
    reading: Reading = "planned",
) -> ProgramResult:
    """Sample answers in rounds until the stop rule fires (or ``n`` samples); return the majority.

    Alone: ``await as_program(self_consistency, question).run(endpoint)``. With a deadline,
    ``lookahead`` samples past the current check are sent ahead (default 2; 0 without a deadline)
    and rounds are fitted to the time left, unless the runtime's window is full
    (:class:`~dynasor_client.algorithms.RoundPlan`). ``reading="finishing"`` races: each sample is
    its own request, ``lookahead`` (default 2) samples go out past each check, and a check reads the
    first samples to finish; the rest are cancelled when the rule fires. Faster, but the rule sees
    the shorter samples first (``docs/online-benchmark.md``, *Racing*: the accuracy effect).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    stop_rule = self_consistency_rule(rule, n, detect)
    context.bind(stop_rule)
    samples = Samples(prompting)
    plan = sampling_plan(
        stop_rule, context, samples, rounds=rounds, n=n, detect=detect, lookahead=lookahead, reading=reading
    )
    reason = None
    draw = chat_draw(context, prompting.chat(question), params or SamplingParams(temperature=0.7))
    async with plan.rounds(draw) as results:
        async for choices in results:
            for choice in choices:
                await samples.add(choice)
            obs = samples.observe()
            context.report(EntropyCertainty()(obs).value, len(samples.answers), samples.majority())
            reason = context.stop_reason(obs)
            if reason is not None:
                break
    if plan.out_of_time:
        reason = StopReason.DEADLINE
    return context.result(samples.majority(), reason, answers=samples.answers, partial=plan.out_of_time)
