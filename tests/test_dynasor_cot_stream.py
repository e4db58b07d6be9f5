"""Dynasor-CoT on one streamed trace (issue 19, part 3), against the real local llama.cpp server and
the replay engine serving the fixture recorded here (tests/data).

SmolLM2-135M tests mechanics only: probes sent from the exact prefix every T streamed tokens while
the trace goes on, one generation request for the chain, every generated token counted (the
server's own count agrees), the rule closing the trace (the server aborts it), the deadline.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dynasor_client import Endpoint, LocalLlamaServer, SamplingParams, as_program
from dynasor_client.algorithms import dynasor_cot
from dynasor_client.benchmarks._cot import CountingTransport
from dynasor_client.certainty import probe_consistency_at_least
from dynasor_client.program import StopReason, run
from dynasor_client.replay import ReplayServer
from dynasor_client.traces import load_traces
from tests.support.llama import IGNORE_EOS, idle_within, predicted

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
LONG_QUESTION = (
    "A farmer has 17 fields. Describe in great detail, field by field, what he plants in each and how "
    "many seeds each needs, then give the total number of seeds."
)
FIXTURE = Path(__file__).parent / "data" / "gsm8k-smollm2-135m-sc4-top5-probe32.jsonl"


@pytest.fixture
async def counted(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> AsyncIterator[tuple[Endpoint, CountingTransport]]:
    """An endpoint on the local server whose generation requests are counted at the transport."""
    transport = CountingTransport()
    caps = await local_endpoint.capabilities()
    async with Endpoint(
        local_server.base_url, capabilities=caps, timeout=60, transport=transport
    ) as endpoint:
        yield endpoint, transport


async def test_probes_overlap_one_streamed_trace_and_every_token_is_counted(
    local_server: LocalLlamaServer, counted: tuple[Endpoint, CountingTransport]
) -> None:
    endpoint, transport = counted
    await idle_within(local_server, 10)
    before = await predicted(local_server)
    program = as_program(
        dynasor_cot,
        QUESTION,
        chunk_tokens=16,
        window=20,  # never agrees within 96 tokens: the trace runs to max_tokens (ignore_eos)
        max_tokens=96,
        decoding="stream",
        # IGNORE_EOS reaches the streamed chain only (probes and the forced answer stop at the
        # model's end): the chain runs to max_tokens (or until closed) whatever text the model writes.
        params=SamplingParams(temperature=0.7, seed=1, extra_body=IGNORE_EOS),
    )
    result = await program.run(endpoint)
    d = result.details
    offsets = [offset for offset, _, _ in d["probes"]]
    assert d["decoding"] == "stream" and len(d["chunk_times"]) == 1
    assert offsets == [16, 32, 48, 64, 80]  # the exact T-token prefixes, 16 tokens after each
    assert result.stop_reason is StopReason.CAP and d["forced"] and not d["finished"]
    # One generation request for the chain; the rest are the probes and the forced answer.
    assert sum(transport.requests.values()) == 1 + len(offsets) + int(d["forced"])
    # Probes run while the trace streams: each was sent before the trace ended, and the trace
    # streamed on while some probe ran.
    (trace_start, trace_end) = d["chunk_times"][0]
    assert all(trace_start < start < trace_end for start, _ in d["probe_times"])
    assert max(d["streamed_during_probes"]) > 0
    # Every generated token is counted: the server's own count is the program's.
    assert result.tokens.generated == d["generated_tokens"] == 96 and result.tokens.probe > 0
    await idle_within(local_server, 5)
    assert await predicted(local_server) - before == result.tokens.generated + result.tokens.probe


async def test_the_rule_closes_the_trace_and_the_server_aborts_it(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    await idle_within(local_server, 10)
    before = await predicted(local_server)
    result = await as_program(
        dynasor_cot,
        LONG_QUESTION,
        chunk_tokens=16,
        max_tokens=700,
        rule=probe_consistency_at_least(0.0, 1),  # fires at the first probe
        decoding="stream",
        params=SamplingParams(temperature=0.0, extra_body=IGNORE_EOS),  # still streaming when it fires
    ).run(local_endpoint)
    d = result.details
    assert result.stop_reason is StopReason.CONFIDENT and d["closed"] and not d["forced"]
    assert result.answer == d["probes"][0][1]  # what the probes agreed on: no forced request
    # Tokens streamed after the probe was sent are counted too (a cancelled chunk's were not).
    assert 16 <= result.tokens.generated == d["generated_tokens"] < 700
    await idle_within(local_server, 3.0)  # a slot still busy here would mean the trace ran on
    extra = await predicted(local_server) - before - result.tokens.generated - result.tokens.probe
    assert 0 <= extra < 40, extra  # the few tokens the server made before it saw the close


async def test_the_deadline_stops_the_trace_with_the_best_answer_so_far(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    await idle_within(local_server, 10)
    program = as_program(
        dynasor_cot,
        LONG_QUESTION,
        chunk_tokens=16,
        window=50,  # never agrees: only the deadline (or max_tokens, ignore_eos) stops it
        max_tokens=700,
        decoding="stream",
        params=SamplingParams(temperature=0.0, extra_body=IGNORE_EOS),
    )
    result = await run(program, local_endpoint, deadline_s=6.0)
    if result.stop_reason is StopReason.CAP and result.tokens.generated == 700:
        pytest.skip("this machine decoded all 700 tokens of the chain within the 6 s deadline")
    assert result.stop_reason is StopReason.DEADLINE and result.partial and result.tokens.generated > 0
    reported = [p.answer for p in result.certaindex]
    assert result.answer == (reported[-1] if reported else None)
    assert all(b is not None for a, b in itertools.pairwise(reported) if a is not None)
    await idle_within(local_server, 3.0)  # the streaming trace was aborted on the server


async def test_auto_streams_where_the_server_reveals_tokens(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    options: dict[str, Any] = {"chunk_tokens": 8, "max_tokens": 24, "params": SamplingParams(temperature=0.0)}
    streamed = await as_program(dynasor_cot, QUESTION, **options).run(local_endpoint)
    assert streamed.details["decoding"] == "stream"
    caps = (await local_endpoint.capabilities()).replace(generated_token_ids=None)
    async with Endpoint(local_server.base_url, capabilities=caps, timeout=60) as blind:
        chunked = await as_program(dynasor_cot, QUESTION, **options).run(blind)
    assert chunked.details["decoding"] == "chunked"
    with pytest.raises(ValueError, match="decoding"):
        await as_program(dynasor_cot, QUESTION, decoding="streamed").run(local_endpoint)


async def test_streamed_probes_of_the_fixture_get_the_recorded_answers() -> None:
    """Through the replay engine (real pace, one event per flush): probes at exactly 32, 64, ...
    tokens of the replayed sample, whose recorded probes answer them."""
    questions = load_traces(FIXTURE)[:3]
    async with (
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=1.0, seed=0) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
    ):
        for q in questions:
            result = await as_program(
                dynasor_cot, q.question, chunk_tokens=32, window=50, decoding="stream", max_tokens=192
            ).run(endpoint)
            d = result.details
            sample = next(s for s in q.samples if s.text == d["text"])
            recorded = dict(sample.probes or ())
            assert [o for o, _, _ in d["probes"]] == [o for o in recorded if o % 32 == 0]
            for offset, answer, _ in d["probes"]:
                assert answer == recorded[offset]
            assert result.tokens.generated == sample.num_tokens
