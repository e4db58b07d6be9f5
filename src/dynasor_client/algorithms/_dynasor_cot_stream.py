"""Dynasor-CoT on one streamed trace (``dynasor_cot(..., decoding="stream")``).

stream the chain as ONE request (a watched trace, ``ProgramContext.watch_trace``)
every T streamed tokens: probe the exact prefix streamed so far, while the trace goes on
judge the probes in offset order; when the rule fires, close the trace (the server aborts it)
    and answer what the probes agreed on
cut at max_tokens (or stopped by the budget): force the answer from everything streamed

Compared with chunked decoding (:mod:`._dynasor_cot`): no request per chunk, no chunk boundary
(the model never pauses between chunks), and every token the trace generated is counted, also
those streamed after the firing probe was sent (a cancelled chunk's are not). A probe is sent at
the first streamed event that reaches ``T, 2T, ...`` tokens: at exactly those offsets where the
server streams one token per event (llama.cpp, vLLM), the event's end otherwise. Its prefix is
the token ids streamed so far (token continuation) or their text. Probes overlap the trace and
each other; they are judged in offset order, so the rule sees them as the chunked decoding
would. Probes still in flight when the trace ends are awaited and counted (their answers too).
The answer reported after each probe (and so a deadline's best answer so far) is the newest
probe answer that was not empty. When the rule fires the answer is the agreed one, with no forced
request (chunked decoding forces it from the prefix the firing probe saw, which at temperature 0
repeats that probe; here the trace has streamed on past it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from .._exceptions import BadRequest
from .._probe import PROBE_SUFFIX
from ..certainty import Observations, ProbeConsistency
from ..certainty.signals import is_hesitant
from ..endpoints import SamplingParams, TextContinuation, TokenContinuation, Trace, Trajectory
from ..program import ProgramContext, ProgramResult, StopReason
from ._cot_probe import Prober, force_answer, prober
from ._prompting import Prompting


async def stream_chain(
    ctx: ProgramContext,
    trajectory: Trajectory,
    *,
    every: int,
    window: int,
    max_tokens: int,
    params: SamplingParams,
    prompting: Prompting,
    on_text: Callable[[str], None] | None = None,
) -> ProgramResult:
    """Decode the chain of ``trajectory`` (just started) as one watched trace (module docs)."""
    cont = trajectory.continuation
    signal, extract, clusters = ProbeConsistency(window), prompting.extractor(), prompting.clusters()
    probes: list[tuple[int, str | None, bool]] = []
    labels: list[int] = []
    probe_times: list[tuple[float, float]] = []
    streamed_meanwhile: list[int] = []  # tokens the trace streamed while each probe ran
    started = time.monotonic()
    suffix_ids: list[int] = []
    reason: StopReason | None = None
    best = agreed = None

    async def probe(offset: int, send: Prober, hesitant: bool, previous: asyncio.Task[None] | None) -> None:
        nonlocal reason, best, agreed
        start = time.monotonic() - started
        answer = await send()
        end, meanwhile = time.monotonic() - started, trace.num_tokens - offset
        if previous is not None:
            await previous  # judged in offset order
        probe_times.append((start, end))
        streamed_meanwhile.append(meanwhile)
        probes.append((offset, answer, hesitant))
        labels.append(await asyncio.to_thread(clusters.add, answer))
        obs = Observations.single(labels, hesitant=[p[2] for p in probes])
        best = answer or best
        ctx.report(float(signal(obs).value), len(probes), best)
        if reason is None and (reason := ctx.stop_reason(obs)) is not None:
            agreed = answer  # what the probes agreed on, when the rule fired
            await trace.close(reason.value)  # the server aborts the request

    prompt, messages = _request(trajectory)
    params = dataclasses.replace(params, max_tokens=max_tokens)
    async with asyncio.TaskGroup() as tg:
        async with ctx.watch_trace(prompt, messages=messages, params=params) as trace:
            previous: asyncio.Task[None] | None = None
            next_at, probed_chars = every, 0
            async for piece in trace:
                if on_text is not None and piece.text:
                    on_text(piece.text)
                while next_at <= trace.num_tokens and next_at < max_tokens and not _over(trace):
                    offset, text, ids = _prefix(trace, next_at)
                    if isinstance(cont, TokenContinuation) and len(ids) != offset:
                        raise BadRequest(f"{trace.where} streamed no token ids: use decoding='chunked'")
                    hesitant, probed_chars = is_hesitant(text[probed_chars:]), len(text)
                    send = await prober(ctx, cont, text, ids, PROBE_SUFFIX, suffix_ids)
                    previous = tg.create_task(probe(offset, send, hesitant, previous))
                    next_at = (offset // every + 1) * every
        trace_time = (0.0, time.monotonic() - started)
    forced_answer = None
    forced = not trace.finished and reason is not StopReason.CONFIDENT
    if forced:  # cut at max_tokens, or stopped by the budget: force the final answer
        forced_answer = await force_answer(ctx, cont, trace.text, trace.token_ids)
    answer = extract(trace.answer) if trace.finished else agreed if not forced else forced_answer
    return ctx.result(
        answer,
        reason,
        steps=len(probes),
        answers=tuple(p[1] for p in probes),
        details={
            "decoding": "stream",
            "probes": probes,
            "forced": forced,
            "forced_answer": forced_answer,
            "finished": trace.finished,
            "closed": trace.stopped,
            "cancelled_chunk": False,
            "context_full": False,
            "probe_times": probe_times,
            "chunk_times": [trace_time],
            "streamed_during_probes": streamed_meanwhile,
            "generated_tokens": trace.generated_tokens,
            "text": trace.text,
        },
    )


def _over(trace: Trace) -> bool:
    """Whether the trace has ended or the server has ended it (no more probes)."""
    return trace.ended or trace.finish_reason is not None


def _prefix(trace: Trace, n: int) -> tuple[int, str, list[int]]:
    """``(offset, text, token ids)`` of the first ``n`` streamed tokens where the stream shows each
    token's text (logprobs making up the text), else of everything streamed so far."""
    tokens = [lp.token for lp in trace.logprobs]
    text = trace.text
    if len(tokens) == trace.num_tokens and "".join(tokens) == text:
        return n, "".join(tokens[:n]), trace.token_ids[:n]
    return trace.num_tokens, text, list(trace.token_ids)


def _request(trajectory: Trajectory) -> tuple[Any, Any]:
    """(prompt, messages) of the watched request: the trajectory's prompt as it started."""
    cont = trajectory.continuation
    if isinstance(cont, TokenContinuation):
        return list(cont.prompt_ids), None
    if isinstance(cont, TextContinuation):
        return cont.prompt, None
    return None, list(cont.messages)  # type: ignore[attr-defined]
