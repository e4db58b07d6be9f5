"""DeepConf online (Fu et al. 2025, "Deep Think with Confidence"): stop weak traces while they stream.

token confidence = minus the mean top-k logprob; group confidence = its mean over a sliding window
    of ``group`` tokens; C_t = a trace's lowest group confidence
warm-up: draw ``warmup`` traces whole (16, or a fraction of ``n``); threshold s = the (100 - eta)-th
    percentile of their C_t (DeepConf-low: eta = 10, keep the top 10%; DeepConf-high: eta = 90)
then draw traces, ``parallel`` at a time, each watched: it is closed the moment its newest window's
    group confidence falls under s (its tokens are spent, its answer dropped)
consensus: certaindex beta = W(leader) / W(all), W(a) = sum of C_t over the completed traces
    answering a; after the warm-up, stop drawing (and close the traces in flight) when the rule
    fires (default: beta >= 0.95, the paper's tau) or ``n`` traces were drawn
answer = argmax V(a), V(a) = sum of C_t over the traces answering a with C_t >= s: the paper's
    filter (the reference code's vote: warm-up traces above s and the later traces not closed)

Deadline and budget work as for self-consistency: the deadline cancels the program (the traces in
flight are closed, their tokens charged) and its last reported answer is returned, partial.
``details``: ``threshold``, ``warmup``, ``traces`` [(tokens, C_t, answer, stop reason)] in the order
they ended (stop reason None: ran to its end; ``"low_confidence"``: closed by its group confidence;
``"closed"``: in flight when the rule fired), ``stopped_early`` (closed by confidence),
``generated_tokens`` (their sum: what the context charged as generated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Literal

import numpy as np

from ..certainty import ConfidenceCertainty, Observations, StopRule, confidence_at_least
from ..certainty.signals import lowest_group_confidence
from ..endpoints import Monitor, SamplingParams, Trace, lowest_group_confidence_below
from ..program import ProgramContext, ProgramResult, StopReason, algorithm
from ._prompting import DEFAULT_PROMPTING, Prompting

KEEP = {"low": 10.0, "high": 90.0}  #: eta: the percent of warm-up traces DeepConf-low/-high keep
LOW = "low_confidence"  #: the stop reason of a trace its group confidence closed


@algorithm
async def deepconf_online(
    question: str,
    *,
    context: ProgramContext,
    n: int = 64,
    warmup: int | float = 16,
    variant: Literal["low", "high"] = "low",
    group: int = 2048,
    top_logprobs: int = 20,
    consensus: float = 0.95,
    rule: StopRule | Literal["paper"] = "paper",
    parallel: int = 8,
    max_tokens: int = 4096,
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
) -> ProgramResult:
    """Draw up to ``n`` traces; stop the weak ones mid-stream; vote by confidence (module docs).

    ``warmup`` below 1 is a fraction of ``n``. ``rule="paper"`` stops when the confidence-weighted
    vote share reaches ``consensus``; any certaindex rule works instead (it sees the completed
    traces: labels, ``confidence`` = C_t, ``tokens``), e.g. ``confidence_at_least(0.9) |
    entropy_at_least(0.9, at=[20])``.
    Alone: ``await as_program(deepconf_online, question).run(endpoint, deadline_s=60)``.
    """
    n_init = max(1, min(n, round(warmup * n) if warmup < 1 else int(warmup)))
    if n < 1 or parallel < 1 or group < 1 or top_logprobs < 1 or variant not in KEEP:
        raise ValueError("need n, parallel, group, top_logprobs >= 1 and variant 'low' or 'high'")
    chat, extract, clusters = prompting.chat(question), prompting.extractor(), prompting.clusters()
    base = dataclasses.replace(
        params or SamplingParams(temperature=0.7), max_tokens=max_tokens, top_logprobs=top_logprobs
    )
    labels: list[int] = []
    confidences: list[float] = []
    tokens: list[int] = []
    traces: list[tuple[int, float, str | None, str | None]] = []
    threshold: float | None = None
    drawn = 0

    async def draw(index: int, monitor: Monitor | None) -> None:
        trace: Trace | None = None
        at = -1
        try:
            async with context.watch_trace(
                messages=chat, params=base.for_sample(index), monitor=monitor
            ) as trace:
                async for _ in trace:
                    pass
        finally:  # recorded however it ended (closed by its monitor, cancelled): its tokens count
            if trace is not None:
                conf, at = lowest_group_confidence(trace.token_confidences, group), len(traces)
                traces.append((trace.generated_tokens, conf, None, trace.stop_reason))
        if trace.stopped:
            return
        answer = await asyncio.to_thread(extract, trace.answer)
        traces[at] = (trace.generated_tokens, conf, answer, None)
        labels.append(await asyncio.to_thread(clusters.add, answer))
        confidences.append(conf)
        tokens.append(trace.generated_tokens)

    def observe() -> Observations:
        obs = Observations.single(labels, tokens=tokens, confidence=confidences)
        context.report(_nan_to_zero(ConfidenceCertainty()(obs).value), len(labels), vote())
        return obs

    def vote() -> str | None:
        weights: dict[int, float] = {}
        for label, conf in zip(labels, confidences, strict=True):
            if label >= 0 and not math.isnan(conf) and (threshold is None or conf >= threshold):
                weights[label] = weights.get(label, 0.0) + max(conf, 0.0)
        return clusters.representatives[max(weights, key=weights.__getitem__)] if weights else None

    async def rounds(count: int, monitor: Monitor | None) -> StopReason | None:
        """Draw ``count`` more traces, ``parallel`` at a time, until the context says stop."""
        nonlocal drawn
        last, running = drawn + count, set[asyncio.Task[None]]()
        async with asyncio.TaskGroup() as tg:
            while running or drawn < last:
                while len(running) < parallel and drawn < last:
                    running.add(tg.create_task(draw(drawn, monitor)))
                    drawn += 1
                _done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if (reason := context.stop_reason(observe())) is not None:
                    for task in running:
                        task.cancel()  # closes its stream; watch_trace still charges its tokens
                    return reason
        return None

    reason = await rounds(n_init, None)  # no rule bound yet: only the deadline or the budget stop it
    if reason is None and drawn < n:
        warm = [c for c in confidences if not math.isnan(c)]
        threshold = float(np.percentile(warm, 100.0 - KEEP[variant])) if warm else -math.inf
        context.bind(confidence_at_least(consensus) if rule == "paper" else rule)
        if (reason := context.stop_reason(observe())) is None:
            reason = await rounds(n - drawn, lowest_group_confidence_below(threshold, group))
    return context.result(
        vote(),
        reason,
        answers=[t[2] for t in traces if t[3] is None],
        details={
            "threshold": threshold,
            "warmup": n_init,
            "traces": traces,
            "stopped_early": sum(t[3] == LOW for t in traces),
            "generated_tokens": sum(t[0] for t in traces),
        },
    )


def _nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value
