"""Dynasor-CoT: stop a long chain of thought once probes of its answer so far agree.

decode in chunks of T tokens; after each chunk, while the next chunk decodes, probe the prefix:
    probe = prompt + text so far + PROBE_SUFFIX (ends in ``\\boxed{``), temperature 0, 20 tokens
certaindex = ProbeConsistency(window) over the probes; stop when the rule fires (default: the last
    ``window`` probes identical and none hesitant), cancel the chunk in flight, force the answer

Definitions:

- **Probe** of the prefix at ``offset`` generated tokens: a completion of the trajectory's prompt, the
  text so far and :data:`~.._probe.PROBE_SUFFIX`, at most :data:`~.._probe.PROBE_MAX_TOKENS` tokens at
  temperature 0; its reply is discarded except the answer (:func:`~.._probe.probe_answer`). It is
  sent together with the decode of the next chunk (one ``asyncio.TaskGroup``), never in between,
  and its tokens count as :attr:`TokenKind.PROBE`. A probe is recorded as ``(offset, answer,
  hesitant)``, so each answer stays attached to the prefix it probed.
- **Thinking**: text is kept exactly as generated, ``<think>...</think>`` inline (a reasoning field
  a server returns separately is a prefill-only case and is continued as the server echoes it). A
  probe of a prefix inside an unclosed ``<think>`` is sent inside the thinking (the suffix continues
  the thought, as in the paper); a model without think tags is probed the same way.
- **Hesitant**: the probed prefix's newest chunk (the ``T`` tokens the probe follows) contains a
  hesitation word (:func:`~..certainty.is_hesitant`: "wait", "hmm", "but", ...). A hesitant probe
  keeps its slot in the window but never agrees.
- **Forced answer**: when the rule fires (or ``max_tokens``, the token allowance or the deadline is
  reached first) one more probe-like request asks for the answer: prefix, ``\\n</think>\\n\\n`` if the
  prefix is inside an unclosed ``<think>``, then the suffix. Its tokens count as probe tokens too.
- **Stop reasons**: ``CONFIDENT`` when the rule fired; ``CAP`` when the chain ran its course: either
  ``max_tokens`` was reached (answer forced) or the model finished on its own (``finished``: its own
  final answer is extracted, nothing forced, nothing saved); ``BUDGET``/``DEADLINE`` from the context.
- **Full context**: a chunk refused with ``ContextTooLong`` ends decoding like ``max_tokens`` (stop
  reason ``CAP``, answer forced, ``details["context_full"]``); a probe refused so answers nothing.
- **Cancelled chunk**: the decode in flight when the rule fires is cancelled (its HTTP request is
  closed); whatever the server generated for it is not counted (the server never reported it). A chunk that
  finished before the firing probe's reply is kept (already paid for) and the answer forced after it.

``details``: ``probes`` [(offset, answer, hesitant)], ``forced``, ``forced_answer``, ``finished``,
``probe_times`` and ``chunk_times`` ((start, end) seconds after the program started, one per probe and
per decoded chunk: probe ``i`` overlaps chunk ``i + 1``), ``cancelled_chunk``, ``generated_tokens``
and ``text`` (the chunks kept, think tags inline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._exceptions import ContextTooLong
from .._log import get_logger, program_scope
from .._probe import CLOSE_THINK, PROBE_MAX_TOKENS, PROBE_SUFFIX, in_thinking, probe_answer
from ..certainty import Observations, ProbeConsistency, StopRule, probe_consistency_at_least
from ..certainty.signals import is_hesitant
from ..endpoints import (
    Generation,
    PrefillContinuation,
    SamplingParams,
    TextContinuation,
    TokenContinuation,
    Trajectory,
)
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind, algorithm
from ._prompting import DEFAULT_PROMPTING, Prompting

log = get_logger("dynasor_client.algorithms")
T = TypeVar("T")


@algorithm
async def dynasor_cot(
    question: str,
    *,
    context: ProgramContext,
    chunk_tokens: int = 64,
    window: int = 3,
    max_tokens: int = 2048,
    rule: StopRule | None = None,
    params: SamplingParams | None = None,
    prompting: Prompting = DEFAULT_PROMPTING,
    on_text: Callable[[str], None] | None = None,
) -> ProgramResult:
    """Decode one chain of thought in chunks, probing each prefix, until the probes agree (see the
    module docs). ``rule`` defaults to ``probe_consistency_at_least(1.0, window)``.
    ``on_text`` (streaming) is called with the text of each decoded chunk as it is kept, in order:
    together they make ``details["text"]`` (a cancelled chunk is never passed).

    Alone: ``await as_program(dynasor_cot, question).run(endpoint)``.
    """
    if chunk_tokens < 1 or max_tokens < 1:
        raise ValueError("chunk_tokens and max_tokens must be >= 1")
    stop_rule = rule or probe_consistency_at_least(1.0, window)
    context.bind(stop_rule)
    ctx = context
    chat = prompting.chat(question)
    started = time.monotonic()
    signal, extract, clusters = ProbeConsistency(window), prompting.extractor(), prompting.clusters()
    probes: list[tuple[int, str | None, bool]] = []
    labels: list[int] = []
    probe_times: list[tuple[float, float]] = []
    chunk_times: list[tuple[float, float]] = []
    context_full: list[int] = []

    async def timed(work: Awaitable[T], log_to: list[tuple[float, float]]) -> T:
        start = time.monotonic() - started
        out = await work
        log_to.append((start, time.monotonic() - started))
        return out

    async def decode(size: int) -> int:
        try:
            # Under a budget the chunk reserves its tokens first and is shrunk to what is left.
            estimate = trajectory.prompt_estimate()
            async with ctx.request_slot(max_tokens=size, prompt_tokens=estimate) as most:
                assert most is not None
                with program_scope(ctx.program_id):
                    chunk = await timed(trajectory.extend(most), chunk_times)
        except ContextTooLong as exc:  # the context is full: decode no more, force the answer
            log.warning("decoding stopped, the context is full: %s", exc)
            context_full.append(trajectory.num_tokens)
            return 0
        ctx.charge(TokenKind.GENERATED, chunk.usage, estimate=estimate)
        if on_text is not None and chunk.text:
            on_text(chunk.text)
        return chunk.num_tokens

    with program_scope(ctx.program_id):
        trajectory = await Trajectory.start(
            ctx.endpoint, messages=chat, params=params or SamplingParams(temperature=0.6)
        )
    suffix_ids: list[int] = []
    reason: StopReason | None = None
    cancelled = False
    last = await decode(min(chunk_tokens, max_tokens))
    while not trajectory.finished and 0 < trajectory.num_tokens < max_tokens and last > 0:
        offset, hesitant = trajectory.num_tokens, is_hesitant(trajectory.pieces[-1])
        send = await _prober(ctx, trajectory, PROBE_SUFFIX, suffix_ids)  # the prefix as it is now
        async with asyncio.TaskGroup() as tg:
            chunk = tg.create_task(decode(min(chunk_tokens, max_tokens - offset)))
            answer = await timed(send(), probe_times)
            probes.append((offset, answer, hesitant))
            labels.append(await asyncio.to_thread(clusters.add, answer))
            obs = Observations.single(labels, hesitant=[p[2] for p in probes])
            ctx.report(float(signal(obs).value), len(probes), answer)
            reason = ctx.stop_reason(obs)
            if reason is not None and not chunk.done():
                chunk.cancel()  # closes the chunk's HTTP request
                cancelled = True
        if reason is not None:
            break
        last = chunk.result()
    forced_answer = None
    if not trajectory.finished:  # stopped early or cut at max_tokens: force the final answer
        opened = isinstance(trajectory.continuation, TextContinuation) and trajectory.continuation.prompt
        close = CLOSE_THINK if in_thinking(trajectory.text, opened or "") else ""
        force = await _prober(ctx, trajectory, close + PROBE_SUFFIX, [])
        forced_answer = await force()
    return ctx.result(
        extract(trajectory.answer) if trajectory.finished else forced_answer,
        reason,
        steps=len(probes),
        answers=tuple(p[1] for p in probes),
        details={
            "probes": probes,
            "forced": not trajectory.finished,
            "forced_answer": forced_answer,
            "finished": trajectory.finished,
            "cancelled_chunk": cancelled,
            "context_full": bool(context_full),
            "probe_times": probe_times,
            "chunk_times": chunk_times,
            "generated_tokens": trajectory.num_tokens,
            "text": trajectory.text,
        },
    )


async def _prober(
    ctx: ProgramContext, trajectory: Trajectory, suffix: str, suffix_ids: list[int]
) -> Callable[[], Awaitable[str | None]]:
    """A probe of the trajectory as it is now (prompt + text + ``suffix``), counted as probe tokens.

    The request is built here, before the next chunk changes the trajectory; ``suffix_ids`` caches
    the suffix's token ids across calls (token continuation).
    """
    cont, endpoint = trajectory.continuation, ctx.endpoint
    params = SamplingParams(max_tokens=PROBE_MAX_TOKENS, temperature=0.0)
    echoes = False
    request: Callable[[SamplingParams], Awaitable[Generation]]
    if isinstance(cont, TokenContinuation):
        if not suffix_ids:
            suffix_ids.extend(await endpoint.tokenize(suffix))
        ids = [*cont.prompt_ids, *trajectory.token_ids, *suffix_ids]
        request = lambda p: endpoint.complete(ids, params=p)  # noqa: E731
    elif isinstance(cont, TextContinuation):
        prompt = cont.prompt + trajectory.text + suffix
        request = lambda p: endpoint.complete(prompt, params=p)  # noqa: E731
    elif isinstance(cont, PrefillContinuation):
        chat: list[Any] = [*cont.messages, {"role": "assistant", "content": trajectory.text + suffix}]
        extra = {"continue_final_message": True, "add_generation_prompt": False}
        params, echoes = dataclasses.replace(params, extra_body=extra), cont.echoes
        request = lambda p: endpoint.chat(chat, params=p)  # noqa: E731
    else:  # pragma: no cover
        raise TypeError(f"cannot probe a {type(cont).__name__}")
    estimate = trajectory.prompt_estimate(suffix)

    def sized(most: int | None) -> SamplingParams:  # shrunk to what the budget has left
        return dataclasses.replace(params, max_tokens=most)

    async def send() -> str | None:
        try:
            async with ctx.request_slot(
                max_tokens=params.max_tokens, prompt_tokens=estimate, kind=TokenKind.PROBE
            ) as most:
                with program_scope(ctx.program_id):
                    generation = await request(params if most == params.max_tokens else sized(most))
        except ContextTooLong as exc:
            log.warning("probe skipped, the prompt no longer fits: %s", exc)
            return None
        ctx.charge(TokenKind.PROBE, generation.usage, estimate=estimate)
        reply = generation.choices[0].raw_text
        if echoes and (at := reply.rfind(PROBE_SUFFIX)) >= 0:  # an echoed assistant prefill
            reply = reply[at + len(PROBE_SUFFIX) :]
        return probe_answer(reply)

    return send


__all__ = ["dynasor_cot", "in_thinking"]
