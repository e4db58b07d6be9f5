"""Dynasor-CoT's probe request, shared by its chunked and streamed decodings.

A probe of a prefix is a completion of the chain's prompt, the prefix (the generated text, or its
token ids) and a suffix, at temperature 0, :data:`~.._probe.PROBE_MAX_TOKENS` tokens at most,
counted as :attr:`TokenKind.PROBE`; only its answer (:func:`~.._probe.probe_answer`) is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._exceptions import ContextTooLong
from .._log import get_logger, program_scope
from .._probe import CLOSE_THINK, PROBE_MAX_TOKENS, PROBE_SUFFIX, in_thinking, probe_answer
from ..endpoints import (
    Continuation,
    Generation,
    PrefillContinuation,
    SamplingParams,
    TextContinuation,
    TokenContinuation,
    estimate_tokens,
    prompt_estimate,
)
from ..program import ProgramContext, TokenKind

log = get_logger("dynasor_client.algorithms")

Prober = Callable[[], Awaitable[str | None]]


async def prober(
    ctx: ProgramContext,
    cont: Continuation,
    text: str,
    token_ids: Sequence[int],
    suffix: str,
    suffix_ids: list[int],
) -> Prober:
    """A probe of the prefix ``text`` (or ``token_ids``, token continuation) followed by ``suffix``.

    The request is built here, from the prefix as it is now; ``suffix_ids`` caches the suffix's
    token ids across calls (token continuation). The probe is sent when the result is awaited.
    """
    endpoint = ctx.endpoint
    params = SamplingParams(max_tokens=PROBE_MAX_TOKENS, temperature=0.0)
    echoes = False
    request: Callable[[SamplingParams], Awaitable[Generation]]
    if isinstance(cont, TokenContinuation):
        if not suffix_ids:
            suffix_ids.extend(await endpoint.tokenize(suffix))
        ids = [*cont.prompt_ids, *token_ids, *suffix_ids]
        estimate = len(ids)
        request = lambda p: endpoint.complete(ids, params=p)  # noqa: E731
    elif isinstance(cont, TextContinuation):
        prompt = cont.prompt + text + suffix
        estimate = estimate_tokens(prompt)
        request = lambda p: endpoint.complete(prompt, params=p)  # noqa: E731
    elif isinstance(cont, PrefillContinuation):
        chat: list[Any] = [*cont.messages, {"role": "assistant", "content": text + suffix}]
        estimate = prompt_estimate(None, chat)
        extra = {"continue_final_message": True, "add_generation_prompt": False}
        params, echoes = dataclasses.replace(params, extra_body=extra), cont.echoes
        request = lambda p: endpoint.chat(chat, params=p)  # noqa: E731
    else:  # pragma: no cover
        raise TypeError(f"cannot probe a {type(cont).__name__}")

    async def send() -> str | None:
        try:
            async with ctx.request_slot(
                max_tokens=params.max_tokens, prompt_tokens=estimate, kind=TokenKind.PROBE
            ) as most:  # shrunk to what the budget has left
                with program_scope(ctx.program_id):
                    generation = await request(dataclasses.replace(params, max_tokens=most))
        except ContextTooLong as exc:
            log.warning("probe skipped, the prompt no longer fits: %s", exc)
            return None
        ctx.charge(TokenKind.PROBE, generation.usage, estimate=estimate)
        reply = generation.choices[0].raw_text
        if echoes and (at := reply.rfind(PROBE_SUFFIX)) >= 0:  # an echoed assistant prefill
            reply = reply[at + len(PROBE_SUFFIX) :]
        return probe_answer(reply)

    return send


async def force_answer(
    ctx: ProgramContext, cont: Continuation, text: str, token_ids: Sequence[int]
) -> str | None:
    """The forced answer of a chain stopped before it finished: a probe of the whole prefix, after
    ``</think>`` when the prefix is inside an unclosed ``<think>``."""
    opened = isinstance(cont, TextContinuation) and cont.prompt
    close = CLOSE_THINK if in_thinking(text, opened or "") else ""
    force = await prober(ctx, cont, text, token_ids, close + PROBE_SUFFIX, [])
    return await force()
