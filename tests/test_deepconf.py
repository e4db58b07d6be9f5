"""DeepConf online (issue 19, part 2) against the real llama.cpp server: later traces are closed
mid-stream by their group confidence, every generated token is accounted (the program's count, the
per-trace counts and llama.cpp's own ``/metrics`` agree), and the deadline and the budget stop it
as they stop self-consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynasor_client import Endpoint, LocalLlamaServer, Runtime, SamplingParams, as_program
from dynasor_client.algorithms import deepconf_online
from dynasor_client.certainty import cap, cluster_answers
from dynasor_client.program import StopReason
from tests.support.llama import IGNORE_EOS, idle_within, predicted

QUESTION = "Tom has 27 apples and buys 21 more. How many apples does he have?"
# Tokens llama.cpp may make after a close before it sees the connection gone, and tokens it had sent
# that the cancelled client never read: 0-2 on an idle machine, 11 seen on a loaded CI run.
ABORT_LAG = 20
SMALL = {"group": 8, "max_tokens": 40, "top_logprobs": 3, "parallel": 4}
WARMUP = 8


async def test_weak_traces_are_closed_mid_stream_and_every_token_is_accounted(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    await idle_within(local_server, 10)
    before = await predicted(local_server)
    program = as_program(
        deepconf_online,
        QUESTION,
        n=16,
        warmup=WARMUP,
        variant="low",
        rule=cap(16),  # draws all 16 whatever they answer (the paper's rule may stop at the warm-up)
        params=SamplingParams(temperature=0.8, seed=1, extra_body=IGNORE_EOS),
        **SMALL,
    )
    result = await program.run(local_endpoint)
    details = result.details
    traces = details["traces"]
    assert result.stop_reason is StopReason.CAP and len(traces) == 16
    warm, later = traces[:WARMUP], traces[WARMUP:]
    # Every trace runs max_tokens (ignore_eos) unless closed: warm-up and later traces are judged on
    # windows of equally long traces, whatever the model writes.
    assert all(tokens == SMALL["max_tokens"] and reason is None for tokens, _, _, reason in warm)
    # DeepConf-low: the threshold is the warm-up's 90th percentile, at or above all but the best
    # warm-up trace's C_t. A later trace escapes closing only when its C_t is at or above it, so
    # none is closed only when all 8 later traces reach 7 of the 8 warm-up ones: for 16 traces drawn
    # alike (seeds aside) a chance of at most 8 / C(16, 7) < 0.1%, whatever text the model writes.
    assert details["threshold"] == pytest.approx(float(np.percentile([c for _, c, _, _ in warm], 90)))
    assert details["stopped_early"] >= 1
    for tokens, conf, answer, reason in later:
        assert reason in (None, "low_confidence")
        if reason is None:  # ran to its end: no window of it fell under the threshold
            assert tokens == SMALL["max_tokens"] and conf >= details["threshold"]
        else:  # closed by the window that fell under the threshold (the last one, at the latest)
            assert answer is None and SMALL["group"] <= tokens <= SMALL["max_tokens"]
            assert conf < details["threshold"]
    # Every token: per trace, as the program charged it, and as the server generated it.
    assert details["generated_tokens"] == sum(t[0] for t in traces) == result.tokens.generated
    await idle_within(local_server, 3.0)
    closed = sum(t[3] is not None for t in traces)
    server = await predicted(local_server) - before
    assert result.tokens.generated <= server <= result.tokens.generated + ABORT_LAG * closed, (server, traces)
    # The answer: the confidence-weighted vote over the traces at or above the threshold, by answer
    # class as the program votes ("48" and "48.0" are one answer).
    kept = [
        (answer, conf)
        for _, conf, answer, reason in traces
        if reason is None and answer is not None and conf >= details["threshold"]
    ]
    labels = cluster_answers([answer for answer, _ in kept])
    votes: dict[int, float] = {}
    for label, (_, conf) in zip(labels, kept, strict=True):
        votes[label] = votes.get(label, 0.0) + conf
    if votes:
        leader = max(votes, key=votes.__getitem__)
        expected = kept[labels.index(leader)][0]
        assert cluster_answers([result.answer, expected]) == [0, 0], (result.answer, kept)
    else:
        assert result.answer is None, (result.answer, traces)


async def test_a_rule_stops_drawing_after_the_warm_up(local_endpoint: Endpoint) -> None:
    program = as_program(
        deepconf_online,
        QUESTION,
        n=20,
        warmup=0.1,
        rule=cap(2),
        # 40 tokens each (ignore_eos): full windows of 8, so the threshold is finite whatever they say
        params=SamplingParams(seed=2, extra_body=IGNORE_EOS),
        **SMALL,
    )
    result = await program.run(local_endpoint)
    assert result.stop_reason is StopReason.CAP
    assert result.details["warmup"] == 2 and len(result.details["traces"]) == 2
    assert math.isfinite(result.details["threshold"])
    with pytest.raises(ValueError, match="variant"):
        await as_program(deepconf_online, QUESTION, variant="medium").run(local_endpoint)  # type: ignore[arg-type]


async def test_the_deadline_closes_the_streams_and_returns_the_best_answer_so_far(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    await idle_within(local_server, 10)
    before = await predicted(local_server)
    program = as_program(
        deepconf_online,
        QUESTION,
        n=200,
        warmup=2,
        rule=cap(1000),
        params=SamplingParams(seed=3),
        **{**SMALL, "parallel": 2},
    )
    result = await program.run(local_endpoint, deadline_s=4.0)
    assert result.stop_reason is StopReason.DEADLINE and result.partial
    # The best answer so far: the last one reported (none when not even the warm-up ended in time,
    # as on a loaded machine).
    assert result.answer == (result.certaindex[-1].answer if result.certaindex else None)
    await idle_within(local_server, 3.0)  # the traces in flight were aborted
    server = await predicted(local_server) - before
    assert 0 < result.tokens.generated <= server <= result.tokens.generated + ABORT_LAG * 2


async def test_under_the_runtime_a_token_cap_stops_it(local_endpoint: Endpoint) -> None:
    async with Runtime(local_endpoint) as runtime:
        prior = runtime.seconds_per_token
        handle = runtime.submit(
            as_program(
                deepconf_online,
                QUESTION,
                n=200,
                warmup=2,
                rule=cap(1000),
                params=SamplingParams(seed=4),
                **SMALL,
            ),
            token_cap=400,
        )
        result = await handle
        # The watched traces taught the scheduler this server's decoding speed.
        assert runtime.seconds_per_token != prior
    assert result.stop_reason is StopReason.BUDGET
    assert result.tokens.total <= 400 + 16
    assert result.tokens.generated > 0
