"""The OpenAI-compatible proxy, driven by the official openai SDK over real HTTP on 127.0.0.1.

Upstreams: the replay engine (recorded Codex / Qwen samples, skipped when the shared data is absent),
the real llama.cpp server with SmolLM2 (``local_model``) and the fault-injection server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from dynasor_client import Capabilities, DynasorError, LocalLlamaServer, RetryPolicy
from dynasor_client._probe import PROBE_CLOSE
from dynasor_client.certainty import cluster_answers
from dynasor_client.proxy import KeyStore, ProxyConfig, ProxyServer, parse_options
from dynasor_client.proxy._errors import ProxyError
from dynasor_client.proxy._options import parse_suffix
from dynasor_client.replay import ReplayServer
from dynasor_client.traces import TraceQuestion
from tests.support.faulty_server import FaultyServer
from tests.support.llama import IGNORE_EOS, busy_slots, idle_within
from tests.support.replay import traces_or_skip

QUESTION = "Tom has 27 apples and buys 21 more. How many apples does he have?"


def _agreement(question: TraceQuestion, k: int) -> int:
    labels = cluster_answers([s.answer for s in question.samples[:k]])
    return max(labels.count(label) for label in set(labels))


_CLIENTS: list[openai.AsyncOpenAI] = []


def _client(proxy: ProxyServer, key: str = "none") -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=60)
    _CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _CLIENTS:
        await _CLIENTS.pop().close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _until(check: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


# ---------------------------------------------------------------------------------------- options


def test_model_suffix_grammar() -> None:
    assert parse_suffix("qwen+sc8") == ("qwen", {"algorithm": "sc", "n": 8})
    assert parse_suffix("qwen+sc") == ("qwen", {"algorithm": "sc"})
    assert parse_suffix("org/model+bon16") == ("org/model", {"algorithm": "best_of_n", "n": 16})
    assert parse_suffix("qwen+cot-high") == ("qwen", {"algorithm": "cot", "effort": "high"})
    assert parse_suffix("my+model") == ("my+model", {})  # not a technique: a plain model name
    assert parse_suffix("qwen+scale") == ("qwen+scale", {})
    assert parse_suffix("qwen+rebase4") == ("qwen", {"algorithm": "rebase", "width": 4})
    assert parse_suffix("qwen+MCTS8") == ("qwen", {"algorithm": "mcts", "iterations": 8})
    assert parse_suffix("qwen+rebased") == ("qwen+rebased", {})
    for bad in ("qwen+sc8x", "qwen+cot-extreme", "+sc4", "qwen+bon-3", "qwen+mcts-4", "qwen+cot8"):
        with pytest.raises(ProxyError):
            parse_suffix(bad)


def test_options_are_validated() -> None:
    options = parse_options({"model": "q+sc8", "dynasor": {"detect": 4, "deadline_s": 9}}, "3")
    assert (options.algorithm, options.model, options.n, options.detect, options.deadline_s) == (
        "sc",
        "q",
        8,
        4,
        3.0,
    )
    assert parse_options({"model": "q"}).algorithm is None
    assert parse_options({"dynasor": {"algorithm": "none", "deadline_s": 2}}).deadline_s == 2.0
    assert parse_options({"dynasor": {"algorithm": "cot", "effort": "low"}}).cot_settings == (32, 2, 1024)
    tree = parse_options({"model": "q+rebase4", "dynasor": {"reward": "pooling", "max_depth": 3}})
    assert (tree.algorithm, tree.width, tree.max_depth, tree.reward, tree.step_tokens) == (
        "rebase",
        4,
        3,
        "pooling",
        256,
    )
    mcts = parse_options({"dynasor": {"algorithm": "mcts", "expansions": 3}})
    assert (mcts.iterations, mcts.expansions, mcts.max_depth, mcts.reward) == (16, 3, 6, None)
    refusals = [  # (body, what the message must name)
        ({"dynasor": {"algorithm": "sc", "effort": "low"}}, "'effort'"),  # another algorithm's option
        ({"dynasor": {"algorithm": "sc", "bogus": 1}}, "'bogus'"),
        ({"dynasor": {"algorithm": "magic"}}, "'rebase', 'mcts'"),
        ({"dynasor": {"n": 4}}, "need an algorithm"),
        ({"dynasor": {"algorithm": "sc", "n": 0}}, "dynasor.n: input should be greater than or equal to 1"),
        ({"dynasor": {"algorithm": "sc", "n": True}}, "dynasor.n: input should be a valid integer"),
        ({"dynasor": {"algorithm": "sc", "rule": "/etc/passwd"}}, "dynasor.rule"),  # a path: never
        ({"dynasor": {"algorithm": "sc", "reward": "judge"}}, "'reward'"),  # sc takes no reward model
        ({"dynasor": {"algorithm": "rebase", "reward": "http://10.0.0.1/v1"}}, "dynasor.reward"),  # no URLs
        ({"dynasor": {"algorithm": "mcts", "iterations": 0, "step_tokens": "64"}}, "dynasor.step_tokens"),
        ({"dynasor": {"algorithm": "cot", "deadline_s": -1}}, "dynasor.deadline_s"),
        ({"dynasor": "sc"}, "must be an object"),
        ({"model": "q+sc4", "dynasor": {"algorithm": "cot"}}, "model suffix asks for 'sc'"),
    ]
    for body, needle in refusals:
        with pytest.raises(ProxyError) as info:
            parse_options(body)
        assert info.value.status == 400 and needle in info.value.message, (body, info.value.message)
        assert isinstance(info.value, DynasorError)  # one hierarchy for the whole library
    with pytest.raises(ProxyError) as info:  # every refused key is named, the first as the param
        parse_options({"dynasor": {"algorithm": "mcts", "iterations": 0, "step_tokens": "64"}})
    assert "dynasor.iterations" in info.value.message and info.value.param == "dynasor.step_tokens"


def test_keys_file(tmp_path: Any) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# team keys\nsk-a 1000\n\nsk-b\n", encoding="utf-8")
    store = KeyStore.from_file(path, default_budget=50)
    a, b = store.authenticate("sk-a"), store.authenticate("sk-b")
    assert a is not None and b is not None and store.authenticate("sk-c") is None
    assert (a.budget.limit, b.budget.limit) == (1000, 50)
    assert "sk-a" not in repr(store) and "sk-a" not in repr(a)


def test_upstream_events_are_parsed_and_reframed() -> None:
    from dynasor_client.proxy import _sse

    async def body() -> AsyncIterator[bytes]:
        # Split mid-line and mid-CRLF, a keep-alive comment, named events, multi-line data, and a
        # last event the connection cut before its blank line.
        for part in (
            b': keep-alive\r\n\r\ndata: {"a"',
            b": 1}\r",
            b"\n\r\nevent: ping\nid: 7\n",
            b"data: x\ndata: y\n\n",
            b'data: [DONE]\n\ndata: {"cut"',
        ):
            yield part

    async def read() -> list[Any]:
        response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())
        return [sse async for sse in _sse.upstream_events(response)]

    events = asyncio.run(read())
    assert [_sse.payload(e) for e in events] == [{"a": 1}, None, None]
    assert [_sse.frame(e) for e in events] == [
        b'data: {"a": 1}\n\n',
        b"event: ping\nid: 7\ndata: x\ndata: y\n\n",
        b"id: 7\n" + _sse.DONE,
    ]  # an id holds until the next one (SSE spec): sent again, it means the same
    assert _sse.is_done(events[-1]) and not _sse.is_done(events[0])


# ---------------------------------------------------------------------------------------- replay


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")


@pytest.fixture(scope="module")
def split(svamp: list[TraceQuestion]) -> TraceQuestion:
    """The question whose answers disagree most (largest class 7 of 30): 5 draws agree ~0.05% of runs."""
    return min(svamp[:100], key=lambda q: _agreement(q, 30))


@pytest.fixture
async def replay(svamp: list[TraceQuestion]) -> AsyncIterator[ReplayServer]:
    # The tiny profile: 10 ms per decode step, so a 44-token sample streams over ~0.45 s.
    async with ReplayServer(svamp, profile="test", time_scale=1.0, seed=5) as server:
        yield server


@pytest.fixture
async def replay_proxy(replay: ReplayServer) -> AsyncIterator[ProxyServer]:
    config = ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities)
    async with ProxyServer(config) as proxy:
        yield proxy


async def test_replay_passthrough_equals_upstream_and_streams_incrementally(
    replay: ReplayServer, replay_proxy: ProxyServer, svamp: list[TraceQuestion]
) -> None:
    proxy, direct = _client(replay_proxy), openai.AsyncOpenAI(base_url=replay.base_url, api_key="x")
    _CLIENTS.append(direct)
    messages = [{"role": "user", "content": svamp[3].question}]
    # A seeded request is a program of its own on the replay server: the same seed, the same sample.
    mine = await proxy.chat.completions.create(model="replay", messages=messages, seed=11)
    theirs = await direct.chat.completions.create(model="replay", messages=messages, seed=11)
    assert mine.choices[0].message.content == theirs.choices[0].message.content
    assert mine.usage is not None and theirs.usage is not None
    assert mine.usage.completion_tokens == theirs.usage.completion_tokens > 10
    assert "replay_timings" in (mine.model_extra or {})  # upstream's own extension field kept

    stream = await proxy.chat.completions.create(model="replay", messages=messages, seed=11, stream=True)
    arrivals, parts = [], []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.usage is None  # not asked for: the usage chunk the proxy added is removed
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            arrivals.append(time.monotonic())
    assert "".join(parts) == theirs.choices[0].message.content
    assert len(parts) > 2 and arrivals[-1] - arrivals[0] > 0.15  # token by token, not one burst

    stream = await proxy.chat.completions.create(
        model="replay", messages=messages, seed=11, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == theirs.usage.completion_tokens


async def test_replay_sc_via_extra_body_counts_every_sample(
    replay_proxy: ProxyServer, svamp: list[TraceQuestion], split: TraceQuestion
) -> None:
    client = _client(replay_proxy)
    answer = await client.chat.completions.create(
        model="replay",
        messages=[{"role": "user", "content": split.question}],
        extra_body={"dynasor": {"algorithm": "sc", "n": 30}},
    )
    info = (answer.model_extra or {})["dynasor"]
    assert info["algorithm"] == "sc" and info["stop_reason"] == "cap" and info["samples"] == 30
    # Drawn without replacement: all 30 recorded samples, so every token of them was paid for.
    usage = answer.usage
    assert usage is not None
    assert usage.completion_tokens == sum(s.num_tokens for s in split.samples) == sum(info["sample_tokens"])
    assert (usage.model_extra or {})["dynasor_saved_tokens"] == 0  # all n drawn: nothing saved
    # The content is the full text of a sample whose answer won the vote.
    content = answer.choices[0].message.content
    winners = {s.text for s in split.samples if cluster_answers([s.answer, info["answer"]]) == [0, 0]}
    assert content in winners
    assert info["answers"][info["winner"]] is not None

    unanimous = next(q for q in svamp if _agreement(q, 30) == 30)
    answer = await client.chat.completions.create(
        model="replay",
        messages=[{"role": "user", "content": unanimous.question}],
        extra_body={"dynasor": {"algorithm": "sc", "n": 30}},
    )
    info, usage = (answer.model_extra or {})["dynasor"], answer.usage
    assert info["stop_reason"] == "confident" and info["samples"] == 5 and info["confidence"] == 1.0
    assert usage is not None and usage.completion_tokens == sum(info["sample_tokens"])
    assert (usage.model_extra or {})["dynasor_saved_tokens"] == round(usage.completion_tokens / 5 * 25)
    assert replay_proxy.service.counters.saved_tokens > 0


async def test_replay_sc_via_model_suffix_streams_the_winner_with_usage(
    replay_proxy: ProxyServer, split: TraceQuestion
) -> None:
    question = split
    stream = await _client(replay_proxy).chat.completions.create(
        model="replay+sc8",
        messages=[{"role": "user", "content": question.question}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"dynasor": {"progress": True}},
    )
    chunks = [chunk async for chunk in stream]
    progress = [
        (c.model_extra or {})["dynasor"]["progress"] for c in chunks if not c.choices and c.usage is None
    ]
    assert [p["observations"] for p in progress] == [5, 8]  # after each round of the vote
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    info = (final.model_extra or {})["dynasor"]
    assert info["samples"] == 8 and info["answer"] is not None
    assert content in {s.text for s in question.samples}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == sum(info["sample_tokens"]) >= 8
    assert all(c.model == "replay+sc8" for c in chunks)


async def test_replay_sc_on_completions_route(replay_proxy: ProxyServer, svamp: list[TraceQuestion]) -> None:
    question = svamp[0]
    answer = await _client(replay_proxy).completions.create(
        model="replay+sc5", prompt=question.question, max_tokens=200
    )
    assert answer.object == "text_completion"
    assert answer.choices[0].text in {s.text for s in question.samples}
    info = (answer.model_extra or {})["dynasor"]
    assert info["samples"] == 5 and cluster_answers([info["answer"], question.gold]) == [0, 0]


async def test_replay_options_refused_with_400(replay_proxy: ProxyServer, svamp: list[TraceQuestion]) -> None:
    client = _client(replay_proxy)
    messages = [{"role": "user", "content": svamp[0].question}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "replay", "extra_body": {"dynasor": {"algorithm": "sc", "colour": "red"}}}, "colour"),
        ({"model": "replay+sc4x"}, "sc4x"),
        ({"model": "replay+sc4", "n": 2}, "n must be 1"),
        ({"model": "replay", "extra_body": {"dynasor": {"algorithm": "sc", "n": "many"}}}, "dynasor.n"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(messages=messages, **kwargs)
        assert needle in info.value.message
    for model in ("replay+cot", "replay+rebase4", "replay+mcts"):  # they build their own chat
        with pytest.raises(openai.BadRequestError, match="chat/completions only"):
            await client.completions.create(model=model, prompt=svamp[0].question)
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{replay_proxy.base_url}/chat/completions", content=b"{not json")
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
        answer = await http.get(f"{replay_proxy.root_url}/v2/nothing")
        assert answer.status_code == 404 and "no route" in answer.json()["error"]["message"]
    assert replay_proxy.service.counters.refused >= 6


async def test_replay_upstream_errors_are_mapped(
    replay_proxy: ProxyServer, svamp: list[TraceQuestion]
) -> None:
    client = _client(replay_proxy)
    too_long = [{"role": "user", "content": svamp[0].question + " pad" * 6000}]  # > the 4,096-token KV cache
    for model in ("replay", "replay+sc4"):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=model, messages=too_long)
        assert info.value.status_code == 400 and "maximum context length" in info.value.message
        assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:  # the upstream's own error code is kept
        await client.chat.completions.create(model="replay", messages=[{"role": "user", "content": "Hi!"}])
    assert info.value.code == "no_recorded_question"


async def test_upstream_down_is_502_with_a_clear_message() -> None:
    upstream = f"http://127.0.0.1:{_free_port()}/v1"
    config = ProxyConfig(upstream=upstream, capabilities=Capabilities())
    async with ProxyServer(config, retry=RetryPolicy(max_attempts=1)) as proxy:
        client = _client(proxy)
        messages = [{"role": "user", "content": QUESTION}]
        for model, stream in (("m", False), ("m", True), ("m+sc4", False), ("m+sc4", True)):
            with pytest.raises(openai.APIStatusError) as info:
                answer = await client.chat.completions.create(model=model, messages=messages, stream=stream)
                if stream:
                    async for _ in answer:  # type: ignore[union-attr]
                        pass
            assert info.value.status_code == 502, (model, stream)
            assert upstream in info.value.message and "upstream" in str(info.value.body)
        with pytest.raises(openai.APIStatusError) as info:
            await client.models.list()
        assert info.value.status_code == 502


async def test_client_disconnect_aborts_the_upstream_request(
    svamp: list[TraceQuestion], split: TraceQuestion
) -> None:
    question = split
    # 10x slower than the tiny profile: a 44-token sample takes ~4.5 s.
    async with (
        ReplayServer(svamp, profile="test", time_scale=10.0, seed=1) as replay,
        ProxyServer(ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities)) as proxy,
    ):
        messages = [{"role": "user", "content": question.question}]
        stream = await _client(proxy).chat.completions.create(model="replay", messages=messages, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        assert replay.metrics()["running"] == 1
        started = time.monotonic()
        await stream.close()
        assert await _until(lambda: replay.metrics()["running"] == 0 and replay.metrics()["aborted"] == 1)
        assert time.monotonic() - started < 3.0  # long before the sample would have ended (~4.5 s)
        assert replay.metrics()["client_disconnects_total"] == 1
        assert await _until(
            lambda: proxy.service.counters.cancelled == 1 and proxy.service.counters.running == 0
        )

        # A vote (nothing sent yet) is cancelled the same way: all 8 samples in flight aborted.
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "replay+sc8", "messages": messages}
            task = asyncio.create_task(http.post(f"{proxy.base_url}/chat/completions", json=body))
            assert await _until(lambda: replay.metrics()["running"] == 5)  # the detect round
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await _until(lambda: replay.metrics()["running"] == 0 and replay.metrics()["aborted"] == 6)
        assert await _until(lambda: proxy.service.counters.cancelled == 2)


async def test_one_runtime_schedules_every_client(svamp: list[TraceQuestion]) -> None:
    # A window of 4 sequences across all clients: 12 concurrent requests, never more than 4 upstream.
    async with (
        ReplayServer(svamp, profile="test", time_scale=1.0, seed=6) as replay,
        ProxyServer(
            ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities, max_in_flight=4)
        ) as proxy,
    ):
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, int(replay.metrics()["running"]))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        clients = [_client(proxy) for _ in range(3)]
        calls = [
            clients[i % 3].chat.completions.create(
                model="replay", messages=[{"role": "user", "content": svamp[i].question}], stream=i % 2 == 0
            )
            for i in range(12)
        ]
        answers = await asyncio.gather(*calls)
        for answer in answers:
            if isinstance(answer, openai.AsyncStream):
                assert [chunk async for chunk in answer]
        watcher.cancel()
        assert peak == 4
        assert proxy.service.counters.passthrough == 12 and proxy.service.runtime.scheduler.in_flight == 0


async def test_keys_budgets_and_no_key_in_logs(
    replay: ReplayServer, svamp: list[TraceQuestion], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, other, wrong, upstream_key = "sk-good-1f2e3d", "sk-other-4a5b6c", "sk-wrong-7d8e9f", "sk-up-0a1b2c"
    keys = KeyStore({good: 50, other: None})
    config = ProxyConfig(
        upstream=replay.base_url,
        capabilities=replay.capabilities,
        keys=keys,
        upstream_api_key=upstream_key,
        token_budget=10_000,
    )
    messages = [{"role": "user", "content": svamp[1].question}]
    async with ProxyServer(config, access_log=True, log_level="debug") as proxy:
        with pytest.raises(openai.AuthenticationError) as refused:
            await _client(proxy, wrong).chat.completions.create(model="replay", messages=messages)
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
        async with httpx.AsyncClient() as http:  # no key at all
            body = {"model": "replay", "messages": messages}
            answer = await http.post(f"{proxy.base_url}/chat/completions", json=body)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "missing_api_key"
        with pytest.raises(openai.AuthenticationError):
            await _client(proxy, wrong).models.list()
        # 50 tokens: the first request is shrunk to fit (max_tokens = 50 less the prompt's estimate).
        first = await _client(proxy, good).chat.completions.create(model="replay", messages=messages)
        assert first.usage is not None and first.usage.total_tokens <= 50
        with pytest.raises(openai.RateLimitError) as quota:
            await _client(proxy, good).chat.completions.create(model="replay", messages=messages)
        assert quota.value.code == "insufficient_quota" and quota.value.status_code == 429
        assert (quota.value.body or {})["type"] == "insufficient_quota"  # type: ignore[index]
        # Another key is not affected; a dynasor program is charged every sample.
        answer = await _client(proxy, other).chat.completions.create(model="replay+sc5", messages=messages)
        assert answer.usage is not None
        stats = proxy.service.stats()
        good_fp, other_fp = (a.fingerprint for a in keys.accounts())
        # Two requests: the second was refused when its reservation did not fit (nothing spent).
        assert stats["keys"][good_fp] == {"requests": 2, "spent": first.usage.total_tokens, "budget": 50}
        assert stats["keys"][other_fp]["spent"] == answer.usage.total_tokens
        assert answer.usage.total_tokens > 5 * first.usage.completion_tokens * 0.5
        assert stats["budget"]["spent"] == first.usage.total_tokens + answer.usage.total_tokens
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{proxy.root_url}/health")).status_code == 200  # no key needed
            assert (await http.get(f"{proxy.root_url}/dynasor/stats")).status_code == 401
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "pass-through chat ok" in caplog.text and "POST /v1/chat/completions" in caplog.text
    for secret in (good, other, wrong, upstream_key):
        assert secret not in text


async def test_deadlines_stop_programs_and_abort_passthrough(
    svamp: list[TraceQuestion], split: TraceQuestion
) -> None:
    # 2x slower than the tiny profile: the detect round takes ~2 s, the whole vote ~5 s.
    async with (
        ReplayServer(svamp, profile="test", time_scale=2.0, seed=4) as replay,
        ProxyServer(ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities)) as proxy,
    ):
        client = _client(proxy)
        messages = [{"role": "user", "content": split.question}]
        answer = await client.chat.completions.create(
            model="replay+sc30",
            messages=messages,
            extra_headers={"X-Dynasor-Deadline-S": "3.5"},  # after the detect round, within the next
        )
        info, usage = (answer.model_extra or {})["dynasor"], answer.usage
        assert info["stop_reason"] == "deadline" and info["partial"]
        # The best answer so far: the detect round's 5 samples, and the 2 of the next round sent
        # ahead when they came back before the program stopped (paid for, so reported).
        assert info["samples"] in (5, 7) and info["answer"] is not None
        assert info["certaindex"][-1][0] == 5  # the rule read the detect round only
        # Billed: the samples kept, plus what the aborted requests had streamed before the deadline
        # (how much is a race), never more than the server generated.
        assert usage is not None and usage.completion_tokens >= sum(info["sample_tokens"])
        assert answer.choices[0].message.content in {s.text for s in split.samples}
        assert await _until(lambda: replay.metrics()["running"] == 0)  # the second round was aborted
        assert usage.completion_tokens <= replay.metrics()["tokens_generated"]

        with pytest.raises(openai.APIStatusError) as late:
            await client.chat.completions.create(
                model="replay", messages=messages, extra_body={"dynasor": {"deadline_s": 0.3}}
            )
        assert late.value.status_code == 504 and late.value.code == "deadline_exceeded"
        stream = await client.chat.completions.create(
            model="replay", messages=messages, stream=True, extra_headers={"X-Dynasor-Deadline-S": "0.5"}
        )
        with pytest.raises(openai.APIError, match="deadline"):  # the stream had started: an error event
            async for _ in stream:
                pass
        assert await _until(lambda: replay.metrics()["running"] == 0)


async def test_replay_best_of_n_with_pooling_rewards() -> None:
    questions = traces_or_skip("math-qwen25math-sc8.jsonl")[:10]
    async with (
        ReplayServer(questions, profile="test", time_scale=0.0, seed=2) as replay,
        ProxyServer(
            ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities, reward="pooling")
        ) as proxy,
    ):
        question = questions[0]
        answer = await _client(proxy).chat.completions.create(
            model="replay",
            messages=[{"role": "user", "content": question.question}],
            extra_body={"dynasor": {"algorithm": "best_of_n", "n": 8, "detect": 8}},
        )
        info, usage = (answer.model_extra or {})["dynasor"], answer.usage
        assert info["algorithm"] == "best_of_n" and info["samples"] == 8
        assert usage is not None and (usage.model_extra or {})["dynasor_tokens"]["reward"] > 0
        assert usage.completion_tokens > sum(info["sample_tokens"])  # samples + reward tokens
        # "max": the content is the highest-reward sample, the one whose answer is returned.
        best = max(question.samples, key=lambda s: s.reward or 0.0)
        assert answer.choices[0].message.content == best.text
        assert cluster_answers([info["answer"], best.answer]) == [0, 0]


async def test_replay_rebase_and_mcts_with_the_pooling_reward_chosen_per_request() -> None:
    # The proxy's own reward model is the judge (the default); each request asks for /pooling, which
    # the replay engine answers from the recorded rewards (a judge's yes/no chat it cannot answer).
    questions = traces_or_skip("math-qwen25math-sc8.jsonl")[:10]
    async with (
        ReplayServer(questions, profile="test", time_scale=0.0, seed=2) as replay,
        ProxyServer(ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities)) as proxy,
    ):
        question = questions[0]
        recorded = {s.answer for s in question.samples}
        messages = [{"role": "user", "content": question.question}]
        client = _client(proxy)
        answer = await client.chat.completions.create(
            model="replay",
            messages=messages,
            extra_body={
                "dynasor": {"algorithm": "rebase", "reward": "pooling", "width": 4, "max_depth": 4,
                            "step_tokens": 64}
            },
        )  # fmt: skip
        info, usage = (answer.model_extra or {})["dynasor"], answer.usage
        assert info["algorithm"] == "rebase" and info["stop_reason"] in ("cap", "confident")
        assert 1 <= info["samples"] == len(info["answers"]) == len(info["rewards"]) <= 4
        assert 1 <= info["depth"] <= 4 and info["saved_tokens"] == 0
        assert info["answer"] is None or info["answer"] in recorded
        if info["answer"] is not None:
            assert answer.choices[0].message.content == f"The answer is \\boxed{{{info['answer']}}}."
        assert usage is not None
        tokens = (usage.model_extra or {})["dynasor_tokens"]
        assert tokens["generated"] > 0 and tokens["reward"] > 0  # every step scored by /pooling
        assert usage.completion_tokens == tokens["generated"] + tokens["reward"]

        stream = await client.chat.completions.create(
            model="replay+mcts6",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={
                "dynasor": {"reward": "pooling", "max_depth": 4, "step_tokens": 64, "progress": True}
            },
        )
        chunks = [chunk async for chunk in stream]
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        info = (final.model_extra or {})["dynasor"]
        progress = [
            (c.model_extra or {})["dynasor"]["progress"] for c in chunks if not c.choices and c.usage is None
        ]
        assert info["algorithm"] == "mcts" and info["iterations"] <= 6 and info["nodes"] > 1
        assert len(progress) == len(info["certaindex"])  # one progress chunk per report
        assert info["answer"] is None or info["answer"] in recorded
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert proxy.service.counters.programs == {"rebase": 1, "mcts": 1}
        assert replay.metrics()["running"] == 0


async def test_replay_cot_streams_the_chain_then_the_forced_answer() -> None:
    questions = traces_or_skip("gsm8k-qwen25coder05b-sc8-logprobs.jsonl")[:8]
    async with (
        ReplayServer(questions, profile="test", time_scale=0.2, seed=0) as replay,
        ProxyServer(ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities)) as proxy,
    ):
        client = _client(proxy)
        for question in questions:
            stream = await client.chat.completions.create(
                model="replay+cot-low",
                messages=[{"role": "user", "content": question.question}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            parts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
            final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
            info = (final.model_extra or {})["dynasor"]
            usage = chunks[-1].usage
            assert usage is not None
            tokens, saved, extra = (
                (usage.model_extra or {})["dynasor_tokens"],
                (usage.model_extra or {})["dynasor_saved_tokens"],
                (usage.model_extra or {})["dynasor_extra_tokens"],
            )
            assert saved >= 0 and extra >= 0 and (saved == 0 or extra == 0)  # never negative (issue 21)
            assert usage.completion_tokens == tokens["generated"] + tokens["probe"]
            assert info["probes"] >= 1 and tokens["probe"] > 0
            assert len(parts) >= 2  # the chain arrives chunk by chunk (32 tokens each)
            text = "".join(parts)
            if not info["forced"]:  # the chain ended on its own: as the model wrote it, probes were extra
                assert text in {s.text for s in question.samples}
                assert saved == 0 and extra == tokens["probe"]
                assert any(cluster_answers([info["answer"], s.answer]) == [0, 0] for s in question.samples)
            elif info["answer"] is not None:
                assert text.endswith("\\boxed{" + str(info["answer"]) + PROBE_CLOSE)


# ---------------------------------------------------------------------------------------- faulty server


@pytest.fixture
def faulty(faulty_server: FaultyServer) -> FaultyServer:
    faulty_server.reset()
    return faulty_server


async def test_passthrough_forwards_the_body_untouched(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), upstream_api_key="sk-proxy-upstream")
    async with ProxyServer(config) as proxy, httpx.AsyncClient() as http:
        raw = (
            b'{"model": "faulty-model",  "messages": [{"role": "user", "content": "weather?"}],'
            b' "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],'
            b' "tool_choice": "auto", "x_vendor_field": {"keep": [1, 2.50, "\\u00e9"]}, "max_tokens": 4}'
        )
        headers = {"authorization": "Bearer client-key", "x-request-id": "t-1", "X-Dynasor-Deadline-S": "30"}
        answer = await http.post(f"{proxy.base_url}/chat/completions", content=raw, headers=headers)
        assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
        (seen,) = faulty.requests("ok")
        assert seen.body == raw  # byte for byte
        assert seen.headers["authorization"] == "Bearer sk-proxy-upstream"  # the proxy's own key
        assert seen.headers["x-request-id"] == "t-1" and "x-dynasor-deadline-s" not in seen.headers

        client = _client(proxy)
        await client.chat.completions.create(
            model="faulty-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"dynasor": {"algorithm": "none"}, "x_vendor_field": 7},
        )
        assert faulty.requests("ok")[-1].json["x_vendor_field"] == 7
        assert "dynasor" not in faulty.requests("ok")[-1].json
        stream = await client.completions.create(model="faulty-model", prompt="hi", max_tokens=5, stream=True)
        chunks = [chunk async for chunk in stream]
        assert faulty.requests("ok")[-1].json["stream_options"] == {"include_usage": True}  # metering
        assert all(c.usage is None for c in chunks) and len(chunks) >= 2
        assert proxy.service.counters.tokens > 0


async def test_upstream_http_errors_keep_their_status(faulty: FaultyServer) -> None:
    async with ProxyServer(ProxyConfig(upstream=faulty.base_url("status-503-2"))) as proxy:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as info:
                await _client(proxy).chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            assert info.value.status_code == 503 and "Injected HTTP 503" in info.value.message
    async with ProxyServer(ProxyConfig(upstream=faulty.base_url("ratelimit-7-1"))) as proxy:
        with pytest.raises(openai.RateLimitError) as limited:
            await _client(proxy).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        assert limited.value.response.headers["retry-after"] == "7"
        assert limited.value.code == "rate_limit_exceeded"
    async with ProxyServer(ProxyConfig(upstream=faulty.base_url("context-too-long"))) as proxy:
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await _client(proxy).completions.create(model="m", prompt="long", max_tokens=4)
    async with ProxyServer(ProxyConfig(upstream=faulty.base_url("drop-1"))) as proxy:
        stream = await _client(proxy).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received = []
        with pytest.raises(openai.APIError, match="upstream"):  # an error event: the stream broke
            async for chunk in stream:
                received.append(chunk)
        assert received  # what came before the drop was forwarded


async def test_upstream_key_own_or_forwarded(faulty: FaultyServer) -> None:
    messages = [{"role": "user", "content": "hi"}]
    upstream = faulty.base_url("auth")
    async with ProxyServer(ProxyConfig(upstream=upstream, upstream_api_key="good-key")) as proxy:
        await _client(proxy, "anything").chat.completions.create(model="m", messages=messages)
        assert (await _client(proxy).models.list()).data[0].id == "faulty-model"
    async with ProxyServer(ProxyConfig(upstream=upstream, upstream_api_key="stale-key")) as proxy:
        with pytest.raises(openai.APIStatusError) as info:  # not the client's fault: 502
            await _client(proxy, "good-key").chat.completions.create(model="m", messages=messages)
        assert info.value.status_code == 502 and info.value.code == "upstream_auth_failed"
    async with ProxyServer(ProxyConfig(upstream=upstream, upstream_auth="forward")) as proxy:
        await _client(proxy, "good-key").chat.completions.create(model="m", messages=messages)
        assert faulty.requests("auth")[-1].headers["authorization"] == "Bearer good-key"
        with pytest.raises(openai.AuthenticationError):  # the client's own key was refused
            await _client(proxy, "bad-key").chat.completions.create(model="m", messages=messages)


def test_cli_proxy_serves_until_terminated(faulty: FaultyServer, tmp_path: Any) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-cli-key-31337 100000\n", encoding="utf-8")
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env["DYNASOR_UPSTREAM_API_KEY"] = "sk-cli-upstream-4242"
    command = [sys.executable, "-m", "dynasor_client", "-v", "proxy", "--upstream", faulty.base_url("ok")]
    command += ["--port", "0", "--api-keys-file", str(keys), "--access-log"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, f"no URL in {line!r}"
        assert "1 API keys" in line
        client = openai.OpenAI(base_url=match.group(1), api_key="sk-cli-key-31337", max_retries=0)
        answer = client.chat.completions.create(
            model="faulty-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
        assert faulty.requests("ok")[-1].headers["authorization"] == "Bearer sk-cli-upstream-4242"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=match.group(1), api_key="sk-not-a-key-999", max_retries=0).models.list()
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        output = proc.stdout.read() + (proc.stderr.read() if proc.stderr else "")
        assert "POST /v1/chat/completions" in output  # -v and --access-log: requests are logged ...
        for secret in ("sk-cli-key-31337", "sk-cli-upstream-4242", "sk-not-a-key-999"):
            assert secret not in output  # ... keys never
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_proxy_refuses_bad_flags(tmp_path: Any) -> None:
    from dynasor_client.cli import main

    assert main(["proxy", "--upstream", "localhost:8000"]) == 2  # not a URL
    missing = str(tmp_path / "absent.txt")
    assert main(["proxy", "--upstream", "http://127.0.0.1:1/v1", "--api-keys-file", missing]) == 2


# ---------------------------------------------------------------------------------------- llama.cpp


@pytest.fixture
async def local_proxy(
    local_server: LocalLlamaServer, local_capabilities: Capabilities
) -> AsyncIterator[ProxyServer]:
    async with ProxyServer(
        ProxyConfig(upstream=local_server.base_url, capabilities=local_capabilities)
    ) as proxy:
        yield proxy


@pytest.mark.local_model
async def test_local_passthrough_equals_upstream_and_streams_token_by_token(
    local_server: LocalLlamaServer, local_proxy: ProxyServer
) -> None:
    proxy, direct = _client(local_proxy), openai.AsyncOpenAI(base_url=local_server.base_url, api_key="x")
    _CLIENTS.append(direct)
    kwargs: dict[str, Any] = {
        "model": local_server.model,
        "messages": [{"role": "user", "content": QUESTION}],
        "seed": 7,
        "temperature": 0.8,
        "max_tokens": 32,
        "extra_body": IGNORE_EOS,  # llama.cpp's, passed through: all 32 tokens on any machine
    }
    theirs = await direct.chat.completions.create(**kwargs)
    mine = await proxy.chat.completions.create(**kwargs)
    assert mine.choices[0].message.content == theirs.choices[0].message.content
    assert mine.usage is not None and theirs.usage is not None
    assert mine.usage.completion_tokens == theirs.usage.completion_tokens
    assert "timings" in (mine.model_extra or {})  # llama.cpp's own extension field kept

    stream = await proxy.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    parts, arrivals, usage = [], [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            arrivals.append(time.monotonic())
        usage = chunk.usage or usage
    assert "".join(parts) == theirs.choices[0].message.content
    assert len(parts) >= 10 and arrivals[-1] > arrivals[0]  # one event per token, as llama.cpp sends them
    assert usage is not None and usage.completion_tokens == theirs.usage.completion_tokens

    prompt = {"model": local_server.model, "prompt": "Once upon a time", "seed": 3, "max_tokens": 12}
    text = (await direct.completions.create(**prompt)).choices[0].text
    assert (await proxy.completions.create(**prompt)).choices[0].text == text


@pytest.mark.local_model
async def test_local_sc_counts_every_sample(local_server: LocalLlamaServer, local_proxy: ProxyServer) -> None:
    answer = await _client(local_proxy).chat.completions.create(
        model=f"{local_server.model}+sc4",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=48,
    )
    info, usage = (answer.model_extra or {})["dynasor"], answer.usage
    assert info["samples"] == 4 and len(info["sample_tokens"]) == 4
    assert all(1 <= t <= 48 for t in info["sample_tokens"])
    assert usage is not None and usage.completion_tokens == sum(info["sample_tokens"]) >= 4
    assert usage.prompt_tokens > 20
    assert answer.choices[0].message.content  # the winning sample's full text
    if info["answer"] is not None:
        assert cluster_answers([info["answers"][info["winner"]], info["answer"]]) == [0, 0]


@pytest.mark.local_model
async def test_local_cot_streams_and_forces_the_answer(
    local_server: LocalLlamaServer, local_proxy: ProxyServer
) -> None:
    # window 1: the first probe that answers stops the chain; the chunk in flight is cancelled.
    stream = await _client(local_proxy).chat.completions.create(
        model=f"{local_server.model}+cot",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=96,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"dynasor": {"window": 1, "chunk_tokens": 16}},
    )
    chunks = [chunk async for chunk in stream]
    parts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    info = (next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra or {})["dynasor"]
    usage = chunks[-1].usage
    assert usage is not None and parts
    tokens = (usage.model_extra or {})["dynasor_tokens"]
    if not info["forced"]:
        pytest.skip("the model finished before any probe answered")
    assert tokens["probe"] > 0 and usage.completion_tokens == tokens["generated"] + tokens["probe"]
    saved = (usage.model_extra or {})["dynasor_saved_tokens"]
    assert saved == 96 - info["generated_tokens"] - tokens["probe"]
    # Which probe answers first (if any does) is the model's choice, so it varies by machine.
    if info["stop_reason"] == "confident":
        assert info["answer"] is not None and info["generated_tokens"] < 96  # stopped before the cap
        assert "".join(parts).endswith("\\boxed{" + info["answer"] + PROBE_CLOSE)
    else:
        assert info["stop_reason"] == "cap" and info["generated_tokens"] > 96 - 16  # the last chunk ran
    await idle_within(local_server, 5.0)


@pytest.mark.local_model
async def test_local_rebase_judged_by_the_upstream_model(
    local_server: LocalLlamaServer, local_proxy: ProxyServer
) -> None:
    # The default reward model: the upstream model itself as a yes/no judge of each partial path.
    answer = await _client(local_proxy).chat.completions.create(
        model=f"{local_server.model}+rebase2",
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        extra_body={"dynasor": {"max_depth": 2, "step_tokens": 16}},
    )
    info, usage = (answer.model_extra or {})["dynasor"], answer.usage
    assert info["algorithm"] == "rebase" and 1 <= info["samples"] <= 2 and info["depth"] <= 2
    assert usage is not None
    tokens = (usage.model_extra or {})["dynasor_tokens"]
    assert tokens["generated"] > 0 and tokens["reward"] > 0  # the judge's prompts and answers, counted
    assert all(r is None or 0.0 <= r <= 1.0 for r in info["rewards"])  # P(Yes)
    assert info["answer"] is None or info["answer"] in info["answers"]


@pytest.mark.local_model
async def test_local_context_too_long_is_400(
    local_server: LocalLlamaServer, local_proxy: ProxyServer
) -> None:
    messages = [{"role": "user", "content": "hello " * 3000}]  # 1,024 tokens per slot
    for model in (local_server.model, f"{local_server.model}+sc4"):
        with pytest.raises(openai.BadRequestError) as info:
            await _client(local_proxy).chat.completions.create(model=model, messages=messages, max_tokens=4)
        assert "context" in info.value.message


@pytest.mark.local_model
async def test_local_disconnect_frees_the_slot(
    local_server: LocalLlamaServer, local_proxy: ProxyServer
) -> None:
    stream = await _client(local_proxy).chat.completions.create(
        model=local_server.model,
        messages=[{"role": "user", "content": "Write a very long story about the sea."}],
        max_tokens=900,
        stream=True,
        extra_body=IGNORE_EOS,  # a llama.cpp field, passed through: ~900 tokens, many seconds
    )
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 3:
            break
    assert await busy_slots(local_server) == 1
    started = time.monotonic()
    await stream.close()
    await idle_within(local_server, 5.0)
    assert time.monotonic() - started < 3.0
    assert await _until(lambda: local_proxy.service.counters.cancelled == 1)
