"""The replay server over real HTTP: the official openai SDK, our Endpoint, aborts, metrics, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynasor_client import Endpoint
from dynasor_client._log import program_scope
from dynasor_client._probe import PROBE_SUFFIX, probe_answer
from dynasor_client.endpoints import Trajectory
from dynasor_client.replay._server import ReplayServer
from dynasor_client.traces import TraceQuestion, TraceSample, load_traces
from tests.test_replay_engine import TRACES, tiny_questions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def tiny() -> AsyncIterator[ReplayServer]:
    async with ReplayServer(tiny_questions(), profile="test", time_scale=0.01, seed=1) as server:
        yield server


@pytest.fixture(scope="module")
def gsm8k() -> list[TraceQuestion]:
    if not TRACES.is_dir():
        pytest.skip(f"recorded traces not found at {TRACES} (the shared data checkout)")
    return load_traces(TRACES / "gsm8k-qwen25coder05b-sc8-logprobs.jsonl")


@pytest.fixture(scope="module")
def math_traces() -> list[TraceQuestion]:
    if not TRACES.is_dir():
        pytest.skip(f"recorded traces not found at {TRACES} (the shared data checkout)")
    return load_traces(TRACES / "math-qwen25math-sc8.jsonl")


def long_questions() -> list[TraceQuestion]:
    """One question with samples of 1,500 tokens: two fill the test profile's 4,096-token KV cache."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    samples = tuple(
        TraceSample(
            answer=str(i),
            num_tokens=1500,
            text=" ".join(words[(i + j) % 5] for j in range(1499)) + f" {i}",
            finish_reason="stop",
        )
        for i in range(4)
    )
    return [
        TraceQuestion(id="long", question="Recite the long list of Greek letters.", gold="0", samples=samples)
    ]


async def _metrics(server: ReplayServer) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        return dict((await client.get(server.root_url + "/metrics?format=json")).json())


async def _metrics_when(
    server: ReplayServer, check: Callable[[dict[str, float]], bool], what: str, within: float = 10.0
) -> dict[str, float]:
    """``/metrics`` once ``check`` holds on them (re-read every 10 ms); fails naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check(figures := await _metrics(server)):
        assert loop.time() < deadline, f"{what}: not within {within} s; /metrics: {figures}"
        await asyncio.sleep(0.01)
    return figures


# ---------------------------------------------------------------------------- the official SDK


async def test_openai_sdk_unchanged(tiny: ReplayServer) -> None:
    q = tiny.engine.questions[0]
    client = openai.AsyncOpenAI(base_url=tiny.base_url, api_key="unused")
    try:
        models = await client.models.list()
        assert models.data[0].id == tiny.model

        completion = await client.completions.create(
            model=tiny.model, prompt=f"Q: {q.question}\nA:", max_tokens=4, n=2, user="sdk"
        )
        assert len(completion.choices) == 2
        assert all(c.finish_reason == "length" for c in completion.choices)
        assert completion.usage is not None and completion.usage.completion_tokens == 8
        assert completion.usage.prompt_tokens > 17

        chat = await client.chat.completions.create(
            model=tiny.model, messages=[{"role": "user", "content": q.question}], user="sdk"
        )
        text = chat.choices[0].message.content
        assert text in {s.text for s in q.samples}
        assert chat.choices[0].finish_reason == "stop"

        stream = await client.chat.completions.create(
            model=tiny.model,
            messages=[{"role": "user", "content": q.question}],
            stream=True,
            stream_options={"include_usage": True},
            user="sdk",
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces) in {s.text for s in q.samples}
        assert usage is not None and usage.completion_tokens > 0

        streamed = await client.completions.create(
            model=tiny.model, prompt=q.question, stream=True, max_tokens=3, user="sdk"
        )
        texts = [c.choices[0].text async for c in streamed if c.choices]
        assert len("".join(texts)) > 0

        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model=tiny.model, prompt="Tell me a joke.", max_tokens=3)
        assert "no recorded question" in str(info.value)
        assert info.value.code == "no_recorded_question"
    finally:
        await client.close()


async def test_errors_are_openai_shaped(tiny: ReplayServer) -> None:
    async with httpx.AsyncClient(base_url=tiny.root_url) as client:
        bad = await client.post("/v1/completions", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        unknown = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert unknown.status_code == 400 and "no recorded question" in unknown.json()["error"]["message"]
        bad_n = await client.post("/v1/completions", json={"prompt": "What is 2 + 2?", "n": 0})
        assert bad_n.status_code == 400 and bad_n.json()["error"]["param"] == "n"
        echo = await client.post("/v1/completions", json={"prompt": "What is 2 + 2?", "echo": True})
        assert echo.status_code == 400
        missing = await client.get("/v1/nothing")
        assert missing.status_code == 404 and "error" in missing.json()
        health = await client.get("/health")
        assert health.json() == {"status": "ok"}


_Q = "What is 2 + 2?"  # a question of tiny_questions()
_C, _CHAT = "/v1/completions", "/v1/chat/completions"


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        (_C, b"[1, 2]", None, "the request body must be a JSON object"),
        (_C, {"prompt": _Q, "n": True}, "n", "'n' must be an integer from 1 to 1024, got True"),
        (_C, {"prompt": _Q, "max_tokens": 0}, "max_tokens", "must be a positive integer, got 0"),
        (_C, {"prompt": _Q, "stop": [1]}, "stop", "'stop' must be a string or a list of strings"),
        (_C, {"prompt": _Q, "logprobs": 21}, "logprobs", "'logprobs' must be an integer from 0 to 20"),
        (_C, {"prompt": _Q, "suffix": "x"}, "suffix", "'suffix' is not supported"),
        (_C, {"prompt": ""}, "prompt", "'prompt' is empty"),
        (_C, {"prompt": [_Q, _Q]}, "prompt", "one prompt per request"),
        (_C, {"n": 2}, "prompt", "'prompt' must be a string or a list of token ids"),
        (_CHAT, {"messages": []}, "messages", "'messages' must be a non-empty list"),
        (_CHAT, {"messages": ["hi"]}, "messages", "each message must be an object"),
        (_CHAT, {"messages": [{"content": 1}]}, "messages", "message content must be"),
        (
            _CHAT,
            {"messages": [{"content": _Q}], "max_completion_tokens": -1, "max_tokens": 4},
            "max_completion_tokens",
            "'max_completion_tokens' must be a positive integer, got -1",
        ),
        (_CHAT, {"messages": [{"content": _Q}], "top_logprobs": 30}, "top_logprobs", "got 30"),
        ("/pooling", b"{not json", None, "the request body is not valid JSON"),
        ("/pooling", {"input": [1]}, "input", "'input' must be a string or a list of strings"),
        ("/tokenize", {"messages": []}, None, "give the text to tokenize as 'prompt' (or 'content')"),
        ("/detokenize", {"tokens": "1 2"}, None, "give 'tokens' as a list of ids"),
        ("/detokenize", {"tokens": [10**6]}, None, "was never issued by this replay server"),
    ],
)
async def test_malformed_requests_are_refused_naming_the_field(
    tiny: ReplayServer, path: str, body: bytes | dict[str, object], param: str | None, message: str
) -> None:
    async with httpx.AsyncClient(base_url=tiny.root_url) as client:
        if isinstance(body, bytes):
            response = await client.post(path, content=body)
        else:
            response = await client.post(path, json=body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["type"] == "invalid_request_error"
    assert message in error["message"] and error["param"] == param


async def test_max_completion_tokens_replaces_max_tokens(tiny: ReplayServer) -> None:
    body = {"messages": [{"content": _Q}], "max_completion_tokens": 2, "max_tokens": "ignored"}
    async with httpx.AsyncClient(base_url=tiny.root_url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


# ---------------------------------------------------------------------------- our client


async def test_endpoint_chunks_reproduce_recorded_samples(gsm8k: list[TraceQuestion]) -> None:
    async with (
        ReplayServer(gsm8k, profile="test", time_scale=0.001) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
    ):
        for q in gsm8k[:2]:
            for mode in ("text", "auto"):  # auto: token-id continuation with the server's ids
                with program_scope(f"chunks-{q.id}-{mode}"):
                    trajectories = [
                        await Trajectory.start(endpoint, f"Question: {q.question}\nAnswer:", mode=mode)
                        for _ in range(3)
                    ]

                    longest = max(s.num_tokens for s in q.samples)

                    async def grow(t: Trajectory, longest: int = longest) -> None:
                        while not t.finished and t.num_tokens < longest:
                            await t.extend(16)

                    await asyncio.gather(*(grow(t) for t in trajectories))
                for t in trajectories:
                    assert t.mode == ("text" if mode == "text" else "tokens")
                    matches = [s for s in q.samples if s.text == t.text]
                    assert matches, "the chunked text is not a recorded sample"
                    assert t.num_tokens == matches[0].num_tokens


async def test_chat_prefill_chunks_reproduce_recorded_samples(tiny: ReplayServer) -> None:
    q = tiny.engine.questions[1]  # its samples share a long prefix
    async with Endpoint(tiny.base_url, capabilities=tiny.capabilities) as endpoint:
        with program_scope("prefill"):
            trajectories = [
                await Trajectory.start(endpoint, messages=[{"role": "user", "content": q.question}])
                for _ in range(len(q.samples))
            ]
            for t in trajectories:  # one after the other: each gets its own sample back
                while not t.finished:
                    await t.extend(4)
    assert all(t.mode == "prefill" for t in trajectories)
    assert sorted(t.text for t in trajectories) == sorted(s.text for s in q.samples)
    counts = {s.text: s.num_tokens for s in q.samples}
    assert all(t.num_tokens == counts[t.text] for t in trajectories)


async def test_endpoint_detects_what_the_server_supports(
    tiny: ReplayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An Endpoint without capabilities= gets its probes answered and detects REPLAY_CAPABILITIES."""
    caplog.set_level(logging.DEBUG, logger="dynasor_client")
    q = tiny.engine.questions[0]
    async with Endpoint(tiny.base_url) as endpoint:
        detected = await endpoint.capabilities()
        with program_scope("after-detection"):  # the traces' draws are untouched by the probes
            result = await endpoint.complete(q.question, n=len(q.samples))
    assert detected == tiny.capabilities
    assert detected.token_exact_continuation and detected.assistant_prefill and detected.completions
    assert sorted(c.raw_text for c in result.choices) == sorted(s.text for s in q.samples)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dynasor_client")]
    assert not [m for m in messages if "capability probes got no answer" in m]
    failed = {m.group(1) for text in messages if (m := re.search(r"capability probe '([^']+)' failed", text))}
    assert failed <= {"props", "apply-template", "tokenize messages"}  # routes the server does not have
    async with httpx.AsyncClient(base_url=tiny.base_url) as client:  # no other unknown prompt is answered
        for prompt in ("Hi there", "Hi\nWhat is the capital of France?", "Say Hello world"):
            refused = await client.post("/completions", json={"prompt": prompt, "max_tokens": 1})
            assert refused.status_code == 400, prompt
            assert refused.json()["error"]["code"] == "no_recorded_question"


@pytest.mark.parametrize("kind", ["completions", "chat"])
@pytest.mark.parametrize("stream", [True, False])
async def test_endpoint_n_choices_are_distinct_and_counted(
    tiny: ReplayServer, kind: str, stream: bool
) -> None:
    q = tiny.engine.questions[0]
    async with Endpoint(tiny.base_url, capabilities=tiny.capabilities, stream=stream) as endpoint:
        with program_scope(f"n-choices-{kind}-{stream}"):
            if kind == "chat":  # counted from logprobs, or token ids where none were recorded
                result = await endpoint.chat([{"role": "user", "content": q.question}], n=4)
            else:  # counted from return_token_ids
                result = await endpoint.complete(q.question, n=4)
    texts = [c.raw_text for c in result.choices]
    assert sorted(texts) == sorted(s.text for s in q.samples)  # without replacement
    by_text = {s.text: s.num_tokens for s in q.samples}
    assert all(c.num_tokens == by_text[c.raw_text] for c in result.choices)
    assert result.usage.completion_tokens == sum(s.num_tokens for s in q.samples)


async def test_draws_ignore_arrival_order(gsm8k: list[TraceQuestion]) -> None:
    """Concurrent requests of several programs, in two orders: each program gets the same samples."""

    async def run(order: list[tuple[str, int]]) -> dict[tuple[str, int], list[str]]:
        async with ReplayServer(gsm8k, profile="test", time_scale=0.001, seed=5) as server:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")

            async def one(program: str, qi: int) -> tuple[tuple[str, int], str]:
                r = await client.completions.create(
                    model="m", prompt=gsm8k[qi].question, max_tokens=8, user=program
                )
                return (program, qi), r.choices[0].text

            results = await asyncio.gather(*(one(p, qi) for p, qi in order))
            await client.close()
        out: dict[tuple[str, int], list[str]] = {}
        for key, text in results:
            out.setdefault(key, []).append(text)
        return {k: sorted(v) for k, v in out.items()}

    requests = [(p, qi) for p in ("a", "b", "c") for qi in (0, 1) for _ in range(3)]
    first = await run(requests)
    second = await run(list(reversed(requests)))
    assert first == second
    assert first[("a", 0)] != first[("b", 0)] or first[("a", 1)] != first[("b", 1)]


# ---------------------------------------------------------------------------- probes and rewards


async def test_probe_over_http(tiny: ReplayServer) -> None:
    q = tiny.engine.questions[0]
    p = tiny.engine.pieces(0, 0)
    client = openai.AsyncOpenAI(base_url=tiny.base_url, api_key="x")
    try:
        recorded = await client.completions.create(
            model="m", prompt=q.question + "\n" + p.prefix(4) + PROBE_SUFFIX, max_tokens=20
        )
        assert probe_answer(recorded.choices[0].text) == "3"
        assert recorded.choices[0].finish_reason == "stop"
        cut = await client.completions.create(
            model="m", prompt=q.question + "\n" + p.prefix(len(p) - 2) + PROBE_SUFFIX, max_tokens=20
        )
        assert probe_answer(cut.choices[0].text) is None  # never the final answer
        chat = await client.chat.completions.create(
            model="m",
            messages=[
                {"role": "user", "content": q.question},
                {"role": "assistant", "content": p.prefix(len(p)) + PROBE_SUFFIX},
            ],
            max_tokens=20,
        )
        assert probe_answer(chat.choices[0].message.content or "") == "7"
    finally:
        await client.close()
    assert (await _metrics(tiny))["probes_total"] == 3


async def test_pooling_rewards(math_traces: list[TraceQuestion]) -> None:
    q = next(q for q in math_traces if q.samples[0].reward is not None)
    async with (
        ReplayServer(math_traces, profile="test", time_scale=0.001) as server,
        httpx.AsyncClient(base_url=server.root_url) as client,
    ):
        full = await client.post(
            "/pooling", json={"model": "m", "input": q.question + "\n" + q.samples[0].text}
        )
        body = full.json()
        assert body["object"] == "list" and body["data"][0]["object"] == "pooling"
        assert body["data"][0]["data"] == [[q.samples[0].reward]]
        assert "approximation" not in body["data"][0]
        half = await client.post(
            "/pooling",
            json={"input": [q.question + "\n" + q.samples[0].text[: len(q.samples[0].text) // 2]]},
        )
        item = half.json()["data"][0]
        assert item["data"] == [[q.samples[0].reward]] and "outcome reward" in item["approximation"]
        bad = await client.post("/pooling", json={"input": q.question})
        assert bad.status_code == 400


async def test_logprobs_in_both_shapes(gsm8k: list[TraceQuestion]) -> None:
    q = gsm8k[0]
    for shape in ("auto", "chat", "legacy"):
        async with (
            ReplayServer(gsm8k, profile="test", time_scale=0.001, logprobs_shape=shape) as server,
            httpx.AsyncClient(base_url=server.base_url) as client,
        ):
            r = await client.post("/completions", json={"prompt": q.question, "max_tokens": 3, "logprobs": 1})
            choice = r.json()["choices"][0]
            lp = choice["logprobs"]
            sample = next(s for s in q.samples if s.text.startswith(choice["text"]))
            values = [x["logprob"] for x in lp["content"]] if shape == "chat" else lp["token_logprobs"]
            assert values == list(sample.token_logprobs[:3])
            assert ("content" in lp) == (shape == "chat")


# ---------------------------------------------------------------------------- aborts and metrics


async def _first_event(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return  # leaving the block closes the connection mid-stream


async def test_disconnect_aborts_and_frees_capacity() -> None:
    q = long_questions()[0]
    async with (
        ReplayServer([q], profile="test", time_scale=1.0) as server,
        httpx.AsyncClient(base_url=server.root_url, timeout=30) as client,
    ):
        body = {"prompt": q.question, "stream": True, "user": "abort"}
        await _first_event(client, body)
        # The server counts a disconnect and aborts the request in the same step.
        after = await _metrics_when(server, lambda m: m["client_disconnects_total"] == 1, "the disconnect")
        assert after["running"] == 0 and after["aborted"] == 1
        assert after["client_disconnects_total"] == 1 and after["kv_used_tokens"] == 0

        # The test profile's KV cache (4,096 tokens) holds two of these: the rest queue.
        streams = [
            await client.send(client.build_request("POST", "/v1/completions", json=body), stream=True)
            for _ in range(8)
        ]
        full = await _metrics_when(
            server,
            lambda m: m["submitted"] == 1 + len(streams) and m["running"] >= 1,
            "the requests reaching the timing model",
        )
        assert full["running"] >= 1 and full["waiting"] >= 1
        for response in streams:  # running and queued requests alike are removed at once
            await response.aclose()
        freed = await _metrics_when(
            server, lambda m: m["client_disconnects_total"] == 1 + len(streams), "the disconnects"
        )
        assert freed["running"] == 0 and freed["waiting"] == 0 and freed["kv_used_tokens"] == 0
        assert freed["aborted"] == 1 + len(streams)
        assert freed["client_disconnects_total"] == 1 + len(streams)

        # The freed memory admits a new request at once.
        await _first_event(client, body)
        assert (await _metrics(server))["waiting"] == 0


async def test_non_streaming_disconnect_aborts() -> None:
    q = long_questions()[0]
    async with (
        ReplayServer([q], profile="test", time_scale=1.0) as server,
        httpx.AsyncClient(base_url=server.root_url, timeout=30) as client,
    ):
        task = asyncio.create_task(client.post("/v1/completions", json={"prompt": q.question}))
        await _metrics_when(server, lambda m: m["running"] == 1, "the request running")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        m = await _metrics_when(server, lambda m: m["client_disconnects_total"] == 1, "the disconnect")
        assert m["running"] == 0 and m["aborted"] == 1


async def test_metrics_prometheus_text(tiny: ReplayServer) -> None:
    q = tiny.engine.questions[1]
    async with httpx.AsyncClient(base_url=tiny.root_url) as client:
        for _ in range(3):
            await client.post("/v1/completions", json={"prompt": q.question, "user": "m"})
        text = (await client.get("/metrics")).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:generation_tokens_total",
        "vllm:num_requests_aborted_total",
        "vllm:gpu_prefix_cache_hit_rate",
        "replay:requests_total",
    ):
        assert f"\n{name} " in "\n" + text
    m = await _metrics(tiny)
    assert m["requests_total"] == 3 and m["finished"] == 3 and m["tokens_generated"] > 0
    assert 0 < m["prefix_cache_hit_rate"] <= 1  # samples of one question share its prompt
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["replay:requests_total"] == 3
    assert samples["vllm:generation_tokens_total"] == m["tokens_generated"]
    assert samples["vllm:gpu_prefix_cache_hit_rate"] == m["prefix_cache_hit_rate"]
    async with (  # a second server in this process counts for itself
        ReplayServer(tiny_questions(), profile="test", time_scale=0) as other,
        httpx.AsyncClient(base_url=other.root_url) as client,
    ):
        text = (await client.get("/metrics")).text
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["replay:requests_total"] == 0 and samples["vllm:generation_tokens_total"] == 0


def test_traces_path_and_model_name(tmp_path: Path) -> None:
    from dynasor_client.traces import question_to_json

    path = tmp_path / "tiny-traces.jsonl"
    path.write_text("".join(json.dumps(question_to_json(q)) + "\n" for q in tiny_questions()))

    async def main() -> str:
        async with ReplayServer(path, time_scale=0) as server, httpx.AsyncClient() as client:
            return str((await client.get(server.base_url + "/models")).json()["data"][0]["id"])

    assert asyncio.run(main()) == "replay-tiny-traces"


def test_cli_commands(tmp_path: Path) -> None:
    from dynasor_client.cli import main

    assert main(["serve-replay", "--traces", str(tmp_path / "missing.jsonl")]) == 2
    from dynasor_client.benchmarks import _replay as _bench

    figures = _bench.bench_replay(streams=(20,), window_s=0.5, warmup_s=0.3, realtime=False, max_tokens=64)
    row = figures["ceiling"][0]
    assert row["streams"] == 20 and row["tokens_per_s"] > 0 and row["requests_failed"] == 0
    assert "tokens/s" in _bench.bench_summary(figures)


# ---------------------------------------------------------------------------- timing validation


async def test_http_run_agrees_with_the_virtual_clock(gsm8k: list[TraceQuestion]) -> None:
    """The same small workload, over HTTP and on the virtual clock, gets the same modelled times.

    The HTTP run records every submitted choice (arrival, prompt keys, output tokens); replaying
    exactly those in a :class:`VirtualClockSimulator` must give each choice the first-token and
    finish times the server reported in ``replay_timings``. Some requests share a question (prefix
    caching) and the "test" profile's 4,096-token KV cache makes some of them queue.
    """
    from dynasor_client.replay._timing_drivers import VirtualClockSimulator

    timings: dict[str, dict[str, object]] = {}
    async with (
        ReplayServer(gsm8k, profile="test", time_scale=0.1, record_submissions=True) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):

        async def one(i: int) -> None:
            await asyncio.sleep(0.004 * i)  # staggered: some overlap, some queue
            q = gsm8k[i % 5]
            prompt = f"Question: {q.question}\nAnswer:"
            kwargs: dict[str, object] = {"n": 1 + i % 2, "max_tokens": 256 if i % 3 else 64}
            if i % 4 == 3:  # streamed: the timings come in the usage chunk
                stream = await client.completions.create(
                    model=server.model,
                    prompt=prompt,
                    stream=True,
                    stream_options={"include_usage": True},
                    **kwargs,  # type: ignore[arg-type]
                )
                rid, extra = "", None
                async for chunk in stream:
                    rid = chunk.id
                    if chunk.usage is not None:
                        extra = chunk.model_extra
            else:
                response = await client.completions.create(model=server.model, prompt=prompt, **kwargs)  # type: ignore[arg-type]
                rid, extra = response.id, response.model_extra
            assert extra is not None
            for c, timing in enumerate(extra["replay_timings"]):
                timings[f"{rid}/{c}"] = timing

        await asyncio.gather(*(one(i) for i in range(16)))
        submissions = list(server.service.submissions)

    assert len(submissions) == len(timings) == sum(1 + i % 2 for i in range(16))
    sim = VirtualClockSimulator(server.profile)
    simulated = {rid: sim.submit(rid, keys, output, at=at) for rid, at, keys, output in submissions}
    sim.run()
    assert any(r.cached_prompt_tokens for r in simulated.values())
    assert any(r.admit_time is not None and r.admit_time > r.arrival_time + 0.05 for r in simulated.values())

    finish_errors, first_errors = [], []
    for rid, at, _, output in submissions:
        timing, request = timings[rid], simulated[rid]
        assert timing["arrival"] == at == request.arrival_time
        assert timing["output_tokens"] == output == request.output_tokens
        assert timing["prompt_tokens"] == request.prompt_tokens
        assert timing["cached_prompt_tokens"] == request.cached_prompt_tokens
        first, finish = timing["first_token"], timing["finish"]
        assert isinstance(first, float) and isinstance(finish, float)
        assert request.first_token_time is not None and request.finish_time is not None
        finish_errors.append(abs(finish - request.finish_time) / (request.finish_time - at))
        first_errors.append(abs(first - request.first_token_time) / (request.first_token_time - at))
    # Given the recorded arrivals the model is deterministic: the runs agree to rounding (measured:
    # exactly equal), however late the loaded event loop delivered the requests.
    assert max(finish_errors) < 1e-9 and max(first_errors) < 1e-9
