"""DEER-style early exit (Dynamic Early Exit in Reasoning Models, arXiv 2504.15895) on one streamed
chain of thought.

stream one chain of thought (one request, watched token by token)
at each transition point (a streamed piece holding "Wait", "Alternatively" or "Hmm"), up to
    ``max_trials`` times: send a trial answer from the exact prefix before that piece:
    prefix + TRIAL_SUFFIX ("\\n**Final Answer**\\n\\boxed{"), greedy, at most 20 tokens, with
    logprobs; the chain keeps streaming meanwhile (the paper pauses it)
confidence = the mean probability of the trial answer's tokens (those before the brace that closes
    the box: the paper's default, an arithmetic mean)
a trial with confidence >= threshold (the paper's 0.95) closes the chain (the server aborts it):
    the most confident trial's answer is the program's; else the chain runs to its end (its own
    answer) or to ``max_tokens`` (answer forced as Dynasor-CoT forces it)

Every trial, and the forced answer, counts as probe tokens; a trial sent before the chain ends is
always awaited, so none goes uncounted. After each trial the program reports the most confident
answer so far: a deadline (the runtime cancels the program) returns it; the budget stops the chain
as it stops self-consistency. On a server that renders no chat template the chain streams as a chat
and each trial continues the assistant's turn. ``details``: ``trials`` [(offset, answer,
confidence)], ``finished``, ``forced``, ``forced_answer``, ``generated_tokens``, ``text``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from .._probe import CLOSE_THINK, PROBE_MAX_TOKENS, PROBE_SUFFIX, in_thinking
from ..certainty.signals import is_hesitant
from ..endpoints import (
    PrefillContinuation,
    SamplingParams,
    TokenContinuation,
    TokenLogprob,
    Trace,
    Trajectory,
)
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind, algorithm
from ._prompting import DEFAULT_PROMPTING, Prompting

#: The paper's answer-inducing prompt, ending in the box's opening brace.
TRIAL_SUFFIX = "\n**Final Answer**\n\\boxed{"
#: Words that mark a transition point in the chain ("Wait" in the paper; "Alternatively" its variant).
DEER_POINTS = ("wait", "alternatively", "hmm")


def trial_confidence(logprobs: Sequence[TokenLogprob]) -> tuple[str | None, float]:
    """A trial reply's answer (its text before the brace closing the box) and its confidence, the
    mean probability of the tokens holding the answer; ``(None, 0.0)`` when the box never closes."""
    text, probs, depth = "", list[float](), 0
    for lp in logprobs:
        for i, ch in enumerate(lp.token):
            depth += (ch == "{") - (ch == "}")
            if depth < 0:  # the closing brace: this token counts if it holds part of the answer
                if lp.token[:i].strip():
                    text, probs = text + lp.token[:i], [*probs, math.exp(lp.logprob)]
                answer = text.strip() or None
                return answer, (sum(probs) / len(probs) if answer else 0.0)
        text, probs = text + lp.token, [*probs, math.exp(lp.logprob)]
    return None, 0.0


@algorithm
async def deer(
    question: str,
    *,
    context: ProgramContext,
    threshold: float = 0.95,
    max_tokens: int = 4096,
    max_trials: int = 10,
    points: Sequence[str] = DEER_POINTS,
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
) -> ProgramResult:
    """Stream one chain of thought; stop it at the first confident trial answer (module docs)."""
    if not 0 < threshold <= 1 or max_tokens < 1 or max_trials < 0:
        raise ValueError("threshold must be in (0, 1], max_tokens >= 1 and max_trials >= 0")
    ctx, extract = context, prompting.extractor()
    trajectory = await Trajectory.start(ctx.endpoint, messages=prompting.chat(question))
    cont = trajectory.continuation
    by_tokens, prefill = isinstance(cont, TokenContinuation), isinstance(cont, PrefillContinuation)
    # The chain's prompt: token ids, text, or (a server without chat templates) the chat continued.
    prompt: Any = cont.prompt_ids if isinstance(cont, TokenContinuation) else getattr(cont, "prompt", "")
    suffix_ids: dict[str, list[int]] = {}
    trials: list[tuple[int, str | None, float]] = []
    best: tuple[float, str | None] = (-1.0, None)
    reason: StopReason | None = None

    async def trial(prefix: Any, suffix: str = TRIAL_SUFFIX) -> tuple[str | None, float]:
        sampling = SamplingParams(max_tokens=PROBE_MAX_TOKENS, temperature=0.0, logprobs=True)
        if isinstance(cont, PrefillContinuation):  # the chain so far as the assistant's turn, continued
            chat = [*cont.messages, {"role": "assistant", "content": prefix + suffix}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
            sampling = dataclasses.replace(sampling, extra_body=extra)
            generation = await ctx.generate(messages=chat, params=sampling, kind=TokenKind.PROBE)
        else:
            if by_tokens and suffix not in suffix_ids:
                suffix_ids[suffix] = await ctx.endpoint.tokenize(suffix)
            ask = [*prefix, *suffix_ids[suffix]] if by_tokens else prefix + suffix
            generation = await ctx.generate(ask, params=sampling, kind=TokenKind.PROBE)
        logprobs = list(generation.choices[0].logprobs or ())
        echoed = len(prefix + suffix) if isinstance(cont, PrefillContinuation) and cont.echoes else 0
        while echoed > 0 and logprobs:  # a server that echoes the prefill: its tokens come first
            echoed -= len(logprobs.pop(0).token)
        return trial_confidence(logprobs)

    async def judged(trace: Trace, prefix: Any, offset: int) -> None:
        nonlocal best, reason
        answer, confidence = await trial(prefix)
        trials.append((offset, answer, confidence))
        best = max(best, (confidence, answer), key=lambda b: b[0])
        ctx.report(confidence, len(trials), best[1])
        if reason is None and answer is not None and confidence >= threshold:
            reason = StopReason.CONFIDENT
        reason = reason or ctx.budget_stop()
        if reason is not None:
            await trace.close(reason.value)  # the server aborts the chain

    chain = dataclasses.replace(params or SamplingParams(temperature=0.6), max_tokens=max_tokens)
    messages = cont.messages if isinstance(cont, PrefillContinuation) else None
    watching = ctx.watch_trace(None if prefill else prompt, messages=messages, params=chain)
    async with asyncio.TaskGroup() as tg, watching as trace:
        sent = 0
        async for piece in trace:
            if sent < max_trials and trace.num_tokens > piece.num_tokens and is_hesitant(piece.text, points):
                sent += 1
                if by_tokens:
                    prefix = [*prompt, *trace.token_ids[: len(trace.token_ids) - len(piece.token_ids)]]
                else:
                    prefix = prompt + trace.text[: len(trace.text) - len(piece.text)]
                tg.create_task(judged(trace, prefix, trace.num_tokens - piece.num_tokens))
    text, finished = trace.text, trace.finished
    forced_answer = None
    if reason is not None:
        answer = best[1]
    elif finished:
        answer = extract(trace.answer)
    else:  # cut at max_tokens: force the answer
        whole = [*prompt, *trace.token_ids] if by_tokens else prompt + text
        close = CLOSE_THINK if in_thinking(text, prompt if isinstance(prompt, str) else "") else ""
        forced_answer = answer = (await trial(whole, close + PROBE_SUFFIX))[0]
    details = {"trials": trials, "finished": finished, "forced": reason is None and not finished,
               "forced_answer": forced_answer, "generated_tokens": trace.generated_tokens,
               "text": text}  # fmt: skip
    return ctx.result(answer, reason, answers=tuple(t[1] for t in trials), steps=len(trials), details=details)
