"""Watched traces (issue 19, part 1) against the real llama.cpp server: a monitor closes a trace
mid-stream, the server's slots show the request aborted, and what was generated is counted."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from dynasor_client import Endpoint, LocalLlamaServer, SamplingParams, Trajectory
from dynasor_client.endpoints import (
    Piece,
    Trace,
    lowest_group_confidence_below,
    monitor_when,
    token_confidence,
    tokens_at_least,
)
from dynasor_client.program import ProgramContext, ProgramResult, StopReason, TokenKind, run
from tests.support.llama import IGNORE_EOS, idle_within, predicted, predicted_settles

PROMPT = "Once upon a time, in a small village by the sea,"
QUESTION = [{"role": "user", "content": "Tom has 27 apples and buys 21 more. How many apples does he have?"}]
LONG = 900  # tokens: several seconds of generation, so an idle slot soon after a close means aborted


async def test_monitor_closes_the_stream_and_the_server_aborts(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    await idle_within(local_server, 10)
    before = await predicted(local_server)
    pieces: list[Piece] = []
    async with local_endpoint.watch(
        PROMPT,
        max_tokens=LONG,
        temperature=1.0,
        seed=3,
        top_logprobs=3,
        extra_body=IGNORE_EOS,
        monitor=tokens_at_least(24),
    ) as trace:
        async for piece in trace:
            pieces.append(piece)
    assert trace.stop_reason == "tokens" and trace.stopped and not trace.finished
    assert trace.finish_reason is None  # the server never got to end it
    assert trace.num_tokens == sum(p.num_tokens for p in pieces) == 24
    assert trace.usage.completion_tokens == trace.generated_tokens == 24
    assert trace.usage.prompt_tokens > 0
    assert len(trace.logprobs) == len(trace.token_ids) == 24
    assert all(len(lp.top) == 3 and lp.token_id is not None for lp in trace.logprobs)
    assert trace.text == "".join(p.text for p in pieces)
    await idle_within(local_server, 3.0)
    generated = await predicted(local_server) - before
    # The server's own count: the tokens read, plus the few it made before it saw the close.
    assert 24 <= generated < 24 + 40, generated


async def test_a_trace_run_to_its_end_counts_the_servers_usage(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    await idle_within(local_server, 10)
    before = await predicted(local_server)
    async with local_endpoint.watch(
        messages=QUESTION, max_tokens=12, temperature=0.0, top_logprobs=2, extra_body=IGNORE_EOS
    ) as trace:
        texts = [piece.text async for piece in trace]
    assert trace.stop_reason is None and trace.finish_reason == "length"
    assert trace.server_usage is not None
    assert trace.usage.completion_tokens == trace.server_usage.completion_tokens == 12
    assert trace.text == "".join(texts) and trace.text
    # llama.cpp counts a request's tokens in /metrics just after it sends the reply's last chunk.
    assert await predicted_settles(local_server, before + trace.generated_tokens) == (
        before + trace.generated_tokens
    )


async def test_group_confidence_monitor_reads_top_k_confidences(local_endpoint: Endpoint) -> None:
    seen: list[float | None] = []

    def record(trace: Trace) -> bool:
        seen.append(trace.group_confidence(4, full=True))
        return False

    # An unreachable threshold: the first full window of 4 tokens closes it.
    watching = monitor_when(record) | lowest_group_confidence_below(1e9, group=4)
    async with local_endpoint.watch(
        PROMPT, max_tokens=64, temperature=0.0, top_logprobs=4, extra_body=IGNORE_EOS, monitor=watching
    ) as trace:
        async for _ in trace:
            pass
    assert trace.stop_reason == "low_confidence" and trace.num_tokens == 4
    assert seen[:3] == [None, None, None]
    expected = sum(-sum(lp for _, lp in t.top) / len(t.top) for t in trace.logprobs) / 4
    assert seen[3] is not None and math.isclose(seen[3], expected)
    assert trace.token_confidences == [token_confidence(t) for t in trace.logprobs]
    with pytest.raises(ValueError, match="top_logprobs"):
        async with local_endpoint.watch(PROMPT, max_tokens=4, monitor=lowest_group_confidence_below(1.0)):
            pass


async def test_close_from_the_loop_and_from_another_task(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    params = SamplingParams(max_tokens=LONG, temperature=1.0, seed=5, extra_body=IGNORE_EOS)
    async with local_endpoint.watch(PROMPT, params=params) as trace:
        assert local_endpoint.outstanding == 1  # an EndpointPool routes by it
        async for _ in trace:
            if trace.num_tokens >= 5:
                await trace.close("enough")
        assert trace.stop_reason == "enough" and trace.num_tokens == 5
    assert local_endpoint.outstanding == 0
    await idle_within(local_server, 3.0)

    async with local_endpoint.watch(PROMPT, params=dataclasses.replace(params, seed=6)) as trace:
        first = asyncio.Event()

        async def read() -> int:
            async for _ in trace:
                first.set()
            return trace.num_tokens

        reader = asyncio.create_task(read())
        await first.wait()
        await trace.close("from outside")
        streamed = await asyncio.wait_for(reader, 5)
    assert trace.stop_reason == "from outside" and streamed == trace.usage.completion_tokens >= 1
    await idle_within(local_server, 3.0)


def _streamed(trace: Trace, chunks: list[dict[str, object]]) -> list[Piece]:
    return [p for c in chunks if (p := trace._fold(c)) is not None]


def test_vllm_shapes_are_parsed() -> None:
    """vLLM/OpenAI stream logprobs as legacy arrays on /v1/completions and as ``content`` in chat."""
    trace = Trace("vllm", 5, None)
    legacy = {
        "choices": [
            {
                "index": 0,
                "text": " 2",
                "token_ids": [220],
                "logprobs": {
                    "tokens": [" 2"],
                    "token_logprobs": [-0.1],
                    "top_logprobs": [{" 2": -0.1, " 3": -2.5}],
                },
                "finish_reason": None,
            }
        ]
    }
    chat = {
        "choices": [
            {
                "index": 0,
                "delta": {"reasoning_content": "hm"},
                "logprobs": {
                    "content": [
                        {"token": "hm", "logprob": -0.5, "top_logprobs": [{"token": "hm", "logprob": -0.5}]}
                    ]
                },
                "finish_reason": "stop",
            }
        ]
    }
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    pieces = _streamed(trace, [legacy, chat, usage])
    assert [p.num_tokens for p in pieces] == [1, 1]
    assert pieces[0].token_ids == (220,) and pieces[0].logprobs[0].top == ((" 2", -0.1), (" 3", -2.5))
    assert pieces[1].reasoning == "hm" and trace.reasoning == "hm" and trace.text == " 2"
    assert trace.token_confidences == [pytest.approx(1.3), pytest.approx(0.5)]
    assert trace.finish_reason == "stop" and trace.usage.prompt_tokens == 7 and trace.generated_tokens == 2


async def test_trajectory_watch_appends_what_streamed(local_endpoint: Endpoint) -> None:
    greedy = SamplingParams(temperature=0.0, extra_body=IGNORE_EOS)
    trajectory = await Trajectory.start(local_endpoint, messages=QUESTION, params=greedy)
    async with trajectory.watch(LONG, monitor=tokens_at_least(6)) as trace:
        async for _ in trace:
            pass
    assert trajectory.num_tokens == 6 and len(trajectory.token_ids) == 6 and not trajectory.finished
    assert trajectory.text == trace.text
    await trajectory.extend(6)
    one_shot = await Trajectory.start(local_endpoint, messages=QUESTION, params=greedy)
    await one_shot.extend(12)
    assert trajectory.token_ids == one_shot.token_ids  # closed mid-stream, continued exactly there


async def test_the_deadline_stops_a_watched_trace_and_its_tokens_are_charged(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    async def program(context: ProgramContext) -> ProgramResult:
        async with context.watch_trace(PROMPT, params=_params(LONG)) as trace:
            async for _ in trace:
                context.report(0.0, trace.num_tokens, trace.text)
        return context.result(trace.text, None)

    # The trace (LONG tokens, no end of its own) outlasts the deadline. A loaded machine may stream
    # no token by it: that run shows only the stop, and a longer deadline is tried.
    for deadline in (0.8, 1.6, 3.2):
        await idle_within(local_server, 10)
        before = await predicted(local_server)
        result = await run(program, local_endpoint, deadline_s=deadline)
        assert result.stop_reason is StopReason.DEADLINE and result.partial
        assert result.tokens.generated < LONG
        await idle_within(local_server, 3.0)
        assert result.tokens.generated <= await predicted(local_server) - before
        if result.certaindex:
            break
    else:
        pytest.fail("no token streamed before a deadline of 0.8, 1.6 or 3.2 s")
    # Charged on cancellation: every streamed token, at least those reported before the deadline.
    assert result.tokens.generated >= result.certaindex[-1].observations > 0


async def test_the_budget_shrinks_a_watched_trace(local_endpoint: Endpoint) -> None:
    async def program(context: ProgramContext) -> ProgramResult:
        async with context.watch_trace(PROMPT, params=_params(LONG), kind=TokenKind.PROBE) as trace:
            async for _ in trace:
                pass
        return context.result(trace.text, None, details={"finish": trace.finish_reason})

    result = await run(program, local_endpoint, token_budget=60)
    assert result.details["finish"] == "length"
    assert result.tokens.probe > 0 and result.tokens.generated == 0
    assert result.tokens.total <= 60 + 8  # the prompt's estimate may be off by a few tokens


def _params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=11, extra_body=IGNORE_EOS)
