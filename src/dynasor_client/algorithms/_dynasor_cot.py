"""Dynasor-CoT: stop a long chain of thought once probes of its answer so far agree.

decode in chunks of T tokens; after each chunk, while the next chunk decodes, probe the prefix:
    probe = prompt + text so far + PROBE_SUFFIX (ends in ``\\boxed{``), temperature 0, 20 tokens
certaindex = ProbeConsistency(window) over the probes; stop when the rule fires (default: the last
    ``window`` probes identical and none hesitant), cancel the chunk in flight, force the answer

**Decoding** (``decoding=``): ``"chunked"`` is the loop above; ``"stream"`` decodes the chain as
one streamed trace probed every ``chunk_tokens`` streamed tokens, probes overlapping the trace
(:mod:`._dynasor_cot_stream`: one generation request, every generated token counted); ``"auto"``
streams where the server reveals each generated token (``Capabilities.generated_token_ids``:
llama.cpp, vLLM, SGLang, the replay server) and keeps chunks elsewhere. The definitions below hold
for both, chunks aside.

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

``details``: ``decoding`` ("chunked" or "stream"), ``probes`` [(offset, answer, hesitant)],
``forced``, ``forced_answer``, ``finished``, ``probe_times`` and ``chunk_times`` ((start, end)
seconds after the program started, one per probe and per decoded chunk: probe ``i`` overlaps chunk
``i + 1``), ``cancelled_chunk``, ``generated_tokens`` and ``text`` (the chunks kept, think tags
inline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from .._exceptions import ContextTooLong
from .._log import get_logger, program_scope
from .._probe import PROBE_SUFFIX, in_thinking
from ..certainty import Observations, ProbeConsistency, StopRule, probe_consistency_at_least
from ..certainty.signals import is_hesitant
from ..endpoints import (
    SamplingParams,
    Trajectory,
)
from ..program import ProgramContext, ProgramResult, StopReason, TokenKind, algorithm
from ._cot_probe import force_answer, prober
from ._dynasor_cot_stream import stream_chain
from ._prompting import DEFAULT_PROMPTING, Prompting

log = get_logger("dynasor_client.algorithms")
T = TypeVar("T")
Decoding = Literal["auto", "stream", "chunked"]


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
    decoding: Decoding = "auto",
) -> ProgramResult:
    """Decode one chain of thought in chunks, probing each prefix, until the probes agree (see the
    module docs). ``rule`` defaults to ``probe_consistency_at_least(1.0, window)``.
    ``on_text`` (streaming) is called with the text of each decoded chunk as it is kept, in order:
    together they make ``details["text"]`` (a cancelled chunk is never passed).
    ``decoding``: ``"stream"`` decodes the chain as one streamed trace probed every
    ``chunk_tokens`` streamed tokens (:mod:`._dynasor_cot_stream`), ``"chunked"`` in chunked
    requests (below), ``"auto"`` streams where the server reveals each generated token (token ids
    or one logprob per token: llama.cpp, vLLM, SGLang), so that every token is counted.

    Alone: ``await as_program(dynasor_cot, question).run(endpoint)``.
    """
    if chunk_tokens < 1 or max_tokens < 1:
        raise ValueError("chunk_tokens and max_tokens must be >= 1")
    if decoding not in ("auto", "stream", "chunked"):
        raise ValueError(f"decoding must be 'auto', 'stream' or 'chunked', got {decoding!r}")
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

    params = params or SamplingParams(temperature=0.6)
    with program_scope(ctx.program_id):
        trajectory = await Trajectory.start(ctx.endpoint, messages=chat, params=params)
    if decoding == "stream" or (
        decoding == "auto" and (await ctx.endpoint.capabilities()).generated_token_ids is not None
    ):
        return await stream_chain(
            ctx,
            trajectory,
            every=chunk_tokens,
            window=window,
            max_tokens=max_tokens,
            params=params,
            prompting=prompting,
            on_text=on_text,
        )
    suffix_ids: list[int] = []
    reason: StopReason | None = None
    cancelled = False
    last = await decode(min(chunk_tokens, max_tokens))
    while not trajectory.finished and 0 < trajectory.num_tokens < max_tokens and last > 0:
        offset, hesitant = trajectory.num_tokens, is_hesitant(trajectory.pieces[-1])
        # the prefix as it is now
        send = await prober(
            ctx, trajectory.continuation, trajectory.text, trajectory.token_ids, PROBE_SUFFIX, suffix_ids
        )
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
        forced_answer = await force_answer(
            ctx, trajectory.continuation, trajectory.text, trajectory.token_ids
        )
    return ctx.result(
        extract(trajectory.answer) if trajectory.finished else forced_answer,
        reason,
        steps=len(probes),
        answers=tuple(p[1] for p in probes),
        details={
            "decoding": "chunked",
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


__all__ = ["Decoding", "dynasor_cot", "in_thinking"]
