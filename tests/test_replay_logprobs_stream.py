"""The replay server streams recorded token logprobs (issue 19, part 4), over real HTTP.

A streamed request that asks for logprobs gets, in each SSE event, the recorded logprob (and the
first K recorded alternatives) of exactly the tokens that event adds, at the timing model's pace;
tokens are the recorded tokens where the trace has them (``tokens``). Also: ``record`` writes
those tokens and rounds logprobs on request, and the recorded fixture of ``tests/data`` replays.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynasor_client import Endpoint
from dynasor_client._probe import PROBE_SUFFIX, probe_answer
from dynasor_client.replay import ReplayServer
from dynasor_client.traces import TraceQuestion, TraceSample, load_dataset, load_traces, record
from tests.support.replay import traces_or_skip

FIXTURE = Path(__file__).parent / "data" / "gsm8k-smollm2-135m-sc4-top5-probe32.jsonl"

QUESTION = "Ann has 3 apples and buys 4 more. How many apples does she have?"
TOKENS = ("Ann", " has", " 3", " +", " 4", " =", " 7", " apples", ".", " The", " answer", " is", " 7", ".")


def _question() -> TraceQuestion:
    """One sample recorded with its tokens, logprobs and top-3 alternatives (two of them)."""
    n = len(TOKENS)
    logprobs = tuple(-0.01 * (i + 1) for i in range(n))
    top = tuple(
        ((t, lp), (f"alt{i}", lp - 1.0), (f"other{i}", lp - 2.0))
        for i, (t, lp) in enumerate(zip(TOKENS, logprobs, strict=True))
    )
    sample = TraceSample(
        answer="7",
        num_tokens=n,
        text="".join(TOKENS),
        finish_reason="stop",
        token_logprobs=logprobs,
        top_logprobs=top,
        tokens=TOKENS,
    )
    return TraceQuestion(id="apples", question=QUESTION, gold="7", samples=(sample,), prompt_tokens=20)


async def _events(
    client: httpx.AsyncClient, route: str, body: dict[str, Any]
) -> list[tuple[float, dict[str, Any]]]:
    """The SSE events of one streamed request with their arrival times (``[DONE]`` left out)."""
    events = []
    async with client.stream("POST", route, json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append((time.perf_counter(), json.loads(line[6:])))
    return events


@pytest.fixture
async def apples() -> AsyncIterator[httpx.AsyncClient]:
    async with (
        ReplayServer([_question()], profile="test", time_scale=0.01, flush_interval_s=0.0) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        yield client


async def test_chat_stream_carries_recorded_tokens_logprobs_and_top_k(apples: httpx.AsyncClient) -> None:
    sample = _question().samples[0]
    body = {"messages": [{"role": "user", "content": QUESTION}], "logprobs": True, "top_logprobs": 2}
    events = await _events(apples, "/chat/completions", body)
    content = [e["choices"][0] for _, e in events if e["choices"]]
    entries = [entry for c in content for entry in (c["logprobs"] or {}).get("content", [])]
    # Each event's logprobs are those of exactly the text it adds.
    for c in content:
        added = "".join(x["token"] for x in c["logprobs"]["content"])
        assert added == c["delta"]["content"]
    assert tuple(x["token"] for x in entries) == TOKENS
    assert [x["logprob"] for x in entries] == list(sample.token_logprobs or ())
    assert all(x["bytes"] == list(x["token"].encode()) for x in entries)
    for x, recorded in zip(entries, sample.top_logprobs or (), strict=True):
        assert [(t["token"], t["logprob"]) for t in x["top_logprobs"]] == list(recorded[:2])
        assert x["top_logprobs"][0]["token"] == x["token"]  # the recorded token is its own top-1 here
    assert content[-1]["finish_reason"] == "stop"


async def test_stream_is_paced_by_the_timing_model(apples: httpx.AsyncClient) -> None:
    body = {
        "messages": [{"role": "user", "content": QUESTION}],
        "logprobs": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    events = await _events(apples, "/chat/completions", body)
    with_tokens = [(t, e) for t, e in events if e["choices"] and e["choices"][0]["logprobs"]]
    # One event per token (no flush interval): the stream is not one body sent at the end.
    assert len(with_tokens) == len(TOKENS)
    usage = events[-1][1]
    assert usage["usage"]["completion_tokens"] == len(TOKENS)
    timing = usage["replay_timings"][0]
    # The last token cannot arrive before the modelled GPU produced it (time_scale 0.01 s per s).
    modelled = (timing["finish"] - timing["arrival"]) * 0.01
    assert modelled > 0
    assert with_tokens[-1][0] - started >= 0.9 * modelled
    assert with_tokens[-1][0] > with_tokens[0][0]


async def test_completions_stream_in_the_legacy_shape(apples: httpx.AsyncClient) -> None:
    sample = _question().samples[0]
    events = await _events(apples, "/completions", {"prompt": QUESTION, "logprobs": 3, "max_tokens": 5})
    parts = [e["choices"][0] for _, e in events if e["choices"]]
    tokens = [t for p in parts for t in p["logprobs"]["tokens"]]
    values = [v for p in parts for v in p["logprobs"]["token_logprobs"]]
    tops = [top for p in parts for top in p["logprobs"]["top_logprobs"]]
    offsets = [o for p in parts for o in p["logprobs"]["text_offset"]]
    assert tuple(tokens) == TOKENS[:5] and values == list((sample.token_logprobs or ())[:5])
    assert tops == [dict(alts) for alts in (sample.top_logprobs or ())[:5]]
    assert offsets == [len("".join(TOKENS[:i])) for i in range(5)]
    assert parts[-1]["finish_reason"] == "length"


async def test_continuation_streams_the_logprobs_from_the_prefix_on(apples: httpx.AsyncClient) -> None:
    sample = _question().samples[0]
    prefix = "".join(TOKENS[:6])
    body = {"prompt": QUESTION + "\n" + prefix, "logprobs": 1}
    events = await _events(apples, "/completions", body)
    values = [v for _, e in events if e["choices"] for v in e["choices"][0]["logprobs"]["token_logprobs"]]
    tokens = [t for _, e in events if e["choices"] for t in e["choices"][0]["logprobs"]["tokens"]]
    assert tuple(tokens) == TOKENS[6:]
    assert values == list((sample.token_logprobs or ())[6:])


async def test_chosen_logprobs_only_trace_streams_empty_alternatives() -> None:
    questions = traces_or_skip("gsm8k-qwen25coder05b-sc8-logprobs.jsonl")[:2]
    q = questions[0]
    async with (
        ReplayServer(questions, profile="test", time_scale=0.0) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        body = {"messages": [{"role": "user", "content": q.question}], "logprobs": True, "top_logprobs": 5}
        events = await _events(client, "/chat/completions", {**body, "max_tokens": 40, "seed": 3})
    entries = [x for _, e in events if e["choices"] for x in e["choices"][0]["logprobs"]["content"]]
    text = "".join(x["token"] for x in entries)
    sample = next(s for s in q.samples if s.text.startswith(text))
    assert len(entries) == 40
    assert [x["logprob"] for x in entries] == list((sample.token_logprobs or ())[:40])
    assert all(x["top_logprobs"] == [] for x in entries)  # none recorded: none made up


# ---------------------------------------------------------------------------- recording them


async def test_record_writes_tokens_and_rounds_logprobs(local_endpoint: Endpoint, tmp_path: Path) -> None:
    dataset = tmp_path / "gsm8k.jsonl"
    dataset.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    out = tmp_path / "traces.jsonl"
    await record(
        local_endpoint,
        load_dataset(dataset),
        out,
        samples=1,
        max_tokens=12,
        top_logprobs=2,
        logprob_decimals=2,
        task="gsm8k",
        progress=False,
    )
    (sample,) = load_traces(out)[0].samples
    assert sample.tokens is not None and len(sample.tokens) == sample.num_tokens
    assert "".join(sample.tokens) == sample.text
    values = [*(sample.token_logprobs or ()), *(lp for top in sample.top_logprobs or () for _, lp in top)]
    assert values and all(round(v, 2) == v for v in values)
    assert any(v != 0 for v in values)


# ---------------------------------------------------------------------------- the recorded fixture


def _fixture() -> list[TraceQuestion]:
    return load_traces(FIXTURE)


def test_fixture_is_small_and_complete() -> None:
    questions = _fixture()
    assert FIXTURE.stat().st_size < 1_500_000
    assert len(questions) == 20 and all(len(q.samples) == 4 for q in questions)
    for q in questions:
        for s in q.samples:
            assert s.tokens is not None and "".join(s.tokens) == s.text and len(s.tokens) == s.num_tokens
            assert s.token_logprobs is not None and len(s.token_logprobs) == s.num_tokens
            assert s.top_logprobs is not None and all(len(top) == 5 for top in s.top_logprobs)
            assert s.probes is not None
            offsets = [at for at, _ in s.probes]
            assert offsets == sorted(set(offsets)) and all(0 < at < s.num_tokens for at in offsets)
            # After each chunk of 32 tokens (one chunk of the file ended a token short: 191, not 192).
            assert offsets[:-1] == list(range(32, 32 * len(offsets), 32))
            assert not offsets or 32 * len(offsets) - 1 <= offsets[-1] <= 32 * len(offsets)


async def test_fixture_replays_with_logprobs_and_recorded_probes() -> None:
    questions = _fixture()
    q = max(questions, key=lambda q: sum(a is not None for s in q.samples for _, a in s.probes or ()))
    async with (
        ReplayServer(questions, profile="test", time_scale=0.0) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        body = {"messages": [{"role": "user", "content": q.question}], "logprobs": True, "top_logprobs": 5}
        events = await _events(client, "/chat/completions", {**body, "user": "fixture"})
        entries = [x for _, e in events if e["choices"] for x in e["choices"][0]["logprobs"]["content"]]
        text = "".join(x["token"] for x in entries)
        sample = next(s for s in q.samples if s.text == text)
        assert tuple(x["token"] for x in entries) == sample.tokens
        assert [x["logprob"] for x in entries] == list(sample.token_logprobs or ())
        assert [[(t["token"], t["logprob"]) for t in x["top_logprobs"]] for x in entries] == [
            list(top) for top in sample.top_logprobs or ()
        ]
        # A probe from the exact prefix gets the answer recorded there (prefixes no other sample shares).
        for at, answer in sample.probes or ():
            prefix = "".join((sample.tokens or ())[:at])
            if sum(s.text.startswith(prefix) for s in q.samples) > 1:
                continue
            probe = await client.post(
                "/completions", json={"prompt": f"{q.question}\n{prefix}{PROBE_SUFFIX}", "max_tokens": 20}
            )
            assert probe_answer(probe.json()["choices"][0]["text"]) == answer
