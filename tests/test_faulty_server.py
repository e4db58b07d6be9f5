"""Self-test of the fault-injection server: each scenario misbehaves exactly as documented."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.faulty_server import CONTEXT_TOO_LONG_MESSAGE, MODEL_ID, FaultyServer

TOKENS = ["answer", " {i}", ":", " 42"]


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultyServer]:
    with FaultyServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(srv: FaultyServer) -> Iterator[None]:
    # Counters are per scenario; resetting keeps every test independent of the order they run in.
    srv.reset()
    yield
    assert srv.errors() == []


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def completion(srv: FaultyServer, http: httpx.Client, scenario: str, **body: Any) -> httpx.Response:
    return http.post(f"{srv.base_url(scenario)}/completions", json={"model": "m", "prompt": "hi", **body})


def chat(srv: FaultyServer, http: httpx.Client, scenario: str, **body: Any) -> httpx.Response:
    messages = [{"role": "user", "content": "what is forty two"}]
    return http.post(
        f"{srv.base_url(scenario)}/chat/completions", json={"model": "m", "messages": messages, **body}
    )


def stream_events(
    srv: FaultyServer, http: httpx.Client, scenario: str, endpoint: str = "completions", **body: Any
) -> tuple[httpx.Response, list[Any]]:
    """POST with stream=true and parse the SSE body: JSON payloads, plus the literal '[DONE]'."""
    payload: dict[str, Any] = {"model": "m", "stream": True, **body}
    if endpoint == "completions":
        payload.setdefault("prompt", "hi")
    else:
        payload.setdefault("messages", [{"role": "user", "content": "hi"}])
    events: list[Any] = []
    url = f"{srv.base_url(scenario)}/{'completions' if endpoint == 'completions' else 'chat/completions'}"
    with http.stream("POST", url, json=payload) as response:
        raw = response.read().decode()
    assert raw.endswith("\n\n")
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return response, events


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


# --- plumbing --------------------------------------------------------------------------------------


def test_health_models_and_unknown_routes(srv: FaultyServer, http: httpx.Client) -> None:
    assert http.get(f"{srv.root_url}/ok/health").json() == {"status": "ok"}
    models = http.get(f"{srv.base_url('ok')}/models")
    assert models.json() == {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "owned_by": "tests"}],
    }
    assert models.headers["connection"] == "close"
    assert http.get(f"{srv.base_url('ok')}/nowhere").status_code == 404
    unknown = completion(srv, http, "no-such-scenario")
    assert unknown.status_code == 404
    assert "no-such-scenario" in error_of(unknown)["message"]
    assert http.get(f"{srv.base_url('ok')}/completions").status_code == 405
    # Only generation requests count towards a scenario's fault budget.
    assert srv.generation_count("ok") == 0


def test_lifecycle_leaks_nothing() -> None:
    threads_before = threading.active_count()
    server = FaultyServer().start()
    port = server.port
    assert server.base_url("ok") == f"http://127.0.0.1:{port}/ok/v1"
    with pytest.raises(RuntimeError):
        server.start()
    # A connection left open mid-request must not keep stop() from finishing.
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        server.stop()
    finally:
        idle.close()
    server.stop()  # idempotent
    assert not server.running
    assert threading.active_count() == threads_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_records_and_reset(srv: FaultyServer, http: httpx.Client) -> None:
    before = time.monotonic()
    completion(srv, http, "ok", n=2, extra=True)
    http.get(f"{srv.root_url}/ok/health", headers={"X-Probe": "Yes"})
    records = srv.requests("ok")
    assert [(r.method, r.path) for r in records] == [
        ("POST", "/ok/v1/completions"),
        ("GET", "/ok/health"),
    ]
    assert records[0].json == {"model": "m", "prompt": "hi", "n": 2, "extra": True}
    assert records[1].json is None
    assert records[1].headers["x-probe"] == "Yes"
    assert before <= records[0].received_at <= records[1].received_at <= time.monotonic()
    assert srv.requests("status-500-1") == []
    assert srv.generation_count("ok") == 1
    srv.reset()
    assert srv.requests("ok") == []
    assert srv.generation_count("ok") == 0


# --- normal answers --------------------------------------------------------------------------------


def test_ok_completions(srv: FaultyServer, http: httpx.Client) -> None:
    response = completion(srv, http, "ok", prompt="hi there you", n=2, max_tokens=8)
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    body = response.json()
    assert body["id"].startswith("cmpl-faulty-")
    assert body["object"] == "text_completion"
    assert body["model"] == "m"
    assert [c["text"] for c in body["choices"]] == ["answer 0: 42", "answer 1: 42"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "stop"]
    assert [c["logprobs"] for c in body["choices"]] == [None, None]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


def test_ok_max_tokens_cuts_with_length(srv: FaultyServer, http: httpx.Client) -> None:
    body = completion(srv, http, "ok", max_tokens=2).json()
    assert body["choices"][0]["text"] == "answer 0"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_ok_chat(srv: FaultyServer, http: httpx.Client) -> None:
    body = chat(srv, http, "ok", n=3).json()
    assert body["object"] == "chat.completion"
    assert [c["message"] for c in body["choices"]] == [
        {"role": "assistant", "content": f"answer {i}: 42"} for i in range(3)
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}


def check_chat_logprobs(logprobs: dict[str, Any], choice: int, k: int) -> None:
    content = logprobs["content"]
    tokens = [t.format(i=choice) for t in TOKENS]
    assert [entry["token"] for entry in content] == tokens
    for j, entry in enumerate(content):
        assert entry["logprob"] == pytest.approx(-0.1 * (j + 1))
        assert entry["bytes"] == list(tokens[j].encode())
        assert entry["id"] == 100 + j
        top = entry["top_logprobs"]
        assert len(top) == k
        if k:
            assert top[0] == {key: entry[key] for key in ("token", "logprob", "bytes", "id")}
        assert all(set(alt) == {"token", "logprob", "bytes", "id"} for alt in top)
        assert [alt["logprob"] for alt in top] == sorted((alt["logprob"] for alt in top), reverse=True)


def test_logprobs_completions_use_chat_shape(srv: FaultyServer, http: httpx.Client) -> None:
    body = completion(srv, http, "ok", n=2, logprobs=3).json()
    for i, choice in enumerate(body["choices"]):
        check_chat_logprobs(choice["logprobs"], i, 3)
    zero = completion(srv, http, "ok", logprobs=0).json()
    check_chat_logprobs(zero["choices"][0]["logprobs"], 0, 0)


def test_logprobs_chat(srv: FaultyServer, http: httpx.Client) -> None:
    body = chat(srv, http, "ok", logprobs=True, top_logprobs=2).json()
    check_chat_logprobs(body["choices"][0]["logprobs"], 0, 2)
    assert chat(srv, http, "ok", logprobs=False).json()["choices"][0]["logprobs"] is None


# --- streaming -------------------------------------------------------------------------------------


def test_stream_completions_framing(srv: FaultyServer, http: httpx.Client) -> None:
    response, events = stream_events(srv, http, "ok", n=2, stream_options={"include_usage": True})
    assert response.headers["content-type"] == "text/event-stream"
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9}
    texts = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    for event in events[:-2]:
        assert event["object"] == "text_completion"
        (choice,) = event["choices"]
        texts[choice["index"]] += choice["text"]
        assert set(choice) == {"index", "text", "finish_reason", "logprobs"}
        if choice["finish_reason"] is not None:
            assert choice["text"] == ""
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "answer 0: 42", 1: "answer 1: 42"}
    assert finishes == {0: "stop", 1: "stop"}
    assert len(events) == 8 + 2 + 1 + 1  # tokens, finishes, usage, [DONE]

    _, without_usage = stream_events(srv, http, "ok")
    assert all("usage" not in event for event in without_usage[:-1])
    assert without_usage[-1] == "[DONE]"


def test_stream_chat_framing(srv: FaultyServer, http: httpx.Client) -> None:
    _, events = stream_events(srv, http, "ok", "chat", n=2, logprobs=True, top_logprobs=1)
    assert events[-1] == "[DONE]"
    seen_role: set[int] = set()
    contents = {0: "", 1: ""}
    for event in events[:-1]:
        assert event["object"] == "chat.completion.chunk"
        (choice,) = event["choices"]
        delta = choice["delta"]
        if choice["index"] not in seen_role:
            assert delta.get("role") == "assistant"
            seen_role.add(choice["index"])
        if choice["finish_reason"] is None:
            assert len(choice["logprobs"]["content"]) == 1
            contents[choice["index"]] += delta["content"]
        else:
            assert delta == {}
            assert choice["finish_reason"] == "stop"
    assert contents == {0: "answer 0: 42", 1: "answer 1: 42"}


# --- fault scenarios -------------------------------------------------------------------------------


def test_status_fails_k_times_then_succeeds(srv: FaultyServer, http: httpx.Client) -> None:
    for _ in range(2):
        response = completion(srv, http, "status-503-2")
        assert response.status_code == 503
        assert error_of(response)["type"] == "server_error"
    # Health checks do not consume the fault budget.
    assert http.get(f"{srv.root_url}/status-503-2/health").status_code == 200
    assert completion(srv, http, "status-503-2").status_code == 200
    assert srv.generation_count("status-503-2") == 3

    client_error = chat(srv, http, "status-400-99")
    assert client_error.status_code == 400
    assert error_of(client_error)["type"] == "invalid_request_error"


def test_ratelimit_sends_retry_after(srv: FaultyServer, http: httpx.Client) -> None:
    limited = completion(srv, http, "ratelimit-0.5-1")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "0.5"
    error_of(limited)
    assert completion(srv, http, "ratelimit-0.5-1").status_code == 200
    assert completion(srv, http, "ratelimit-2-1").headers["retry-after"] == "2"


def test_drop_non_streaming_is_incomplete(srv: FaultyServer, http: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        completion(srv, http, "drop-1")
    assert completion(srv, http, "drop-1").json()["choices"][0]["text"] == "answer 0: 42"


def test_drop_streaming_is_incomplete(srv: FaultyServer, http: httpx.Client) -> None:
    lines: list[str] = []
    body = {"model": "m", "prompt": "hi", "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", f"{srv.base_url('drop-1')}/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines.extend(line for line in response.iter_lines() if line)
    assert len(lines) == 2
    assert all(line.startswith("data: {") for line in lines)
    _, events = stream_events(srv, http, "drop-1")
    assert events[-1] == "[DONE]"


def test_malformed_is_invalid_json(srv: FaultyServer, http: httpx.Client) -> None:
    response = completion(srv, http, "malformed")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_slow_delays_without_blocking_others(srv: FaultyServer, http: httpx.Client) -> None:
    result: dict[str, float] = {}

    def slow_call() -> None:
        start = time.monotonic()
        completion(srv, http, "slow-0.3").raise_for_status()
        result["elapsed"] = time.monotonic() - start

    worker = threading.Thread(target=slow_call)
    worker.start()
    # The slow request has reached the server (counted before it starts sleeping).
    deadline = time.monotonic() + 5
    while srv.generation_count("slow-0.3") < 1:
        assert time.monotonic() < deadline, "the slow request never reached the server"
        time.sleep(0.005)
    start = time.monotonic()
    assert completion(srv, http, "ok").status_code == 200
    assert time.monotonic() - start < 0.2  # served while the slow one is still sleeping
    worker.join()
    assert result["elapsed"] >= 0.3

    start = time.monotonic()
    body = {"model": "m", "prompt": "hi", "stream": True}
    with http.stream("POST", f"{srv.base_url('slow-0.2')}/completions", json=body) as response:
        lines = (line for line in response.iter_lines() if line)
        first = next(lines)
        assert time.monotonic() - start >= 0.2
        assert first.startswith("data: {")
        assert list(lines)[-1] == "data: [DONE]"


def test_legacy_logprobs(srv: FaultyServer, http: httpx.Client) -> None:
    logprobs = completion(srv, http, "legacy-logprobs", logprobs=2).json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["answer", " 0", ":", " 42"]
    assert logprobs["token_logprobs"] == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert logprobs["text_offset"] == [0, 6, 8, 9]
    assert len(logprobs["top_logprobs"]) == 4
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    assert logprobs["top_logprobs"][0]["answer"] == pytest.approx(-0.1)
    zero = completion(srv, http, "legacy-logprobs", logprobs=0).json()["choices"][0]["logprobs"]
    assert zero["top_logprobs"] is None
    assert completion(srv, http, "legacy-logprobs").json()["choices"][0]["logprobs"] is None
    # Chat keeps the chat shape.
    chat_body = chat(srv, http, "legacy-logprobs", logprobs=True).json()
    check_chat_logprobs(chat_body["choices"][0]["logprobs"], 0, 0)


def test_max_n(srv: FaultyServer, http: httpx.Client) -> None:
    refused = completion(srv, http, "max-n-1", n=2)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": {
            "code": 400,
            "message": "Field 'n': Value must be between 1 <= value <= 1, but got 2",
            "type": "invalid_request_error",
        }
    }
    assert completion(srv, http, "max-n-1", n=1).status_code == 200
    assert len(chat(srv, http, "max-n-4", n=4).json()["choices"]) == 4


def test_context_too_long(srv: FaultyServer, http: httpx.Client) -> None:
    response = chat(srv, http, "context-too-long")
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": CONTEXT_TOO_LONG_MESSAGE, "type": "BadRequestError", "code": 400}
    }


def test_auth(srv: FaultyServer, http: httpx.Client) -> None:
    assert completion(srv, http, "auth").status_code == 401
    wrong = http.get(f"{srv.base_url('auth')}/models", headers={"Authorization": "Bearer bad-key"})
    assert wrong.status_code == 401
    error_of(wrong)
    good = {"Authorization": "Bearer good-key"}
    url = f"{srv.base_url('auth')}/completions"
    assert http.post(url, json={"model": "m", "prompt": "hi"}, headers=good).status_code == 200


def test_reasoning(srv: FaultyServer, http: httpx.Client) -> None:
    message = chat(srv, http, "reasoning").json()["choices"][0]["message"]
    assert message == {"role": "assistant", "reasoning_content": "Let me think. 40 + 2.", "content": "42"}
    _, events = stream_events(srv, http, "reasoning", "chat")
    deltas = [event["choices"][0]["delta"] for event in events[:-2]]
    kinds = ["reasoning_content" if "reasoning_content" in d else "content" for d in deltas]
    assert kinds == sorted(kinds, reverse=True)  # all reasoning first, then content
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think. 40 + 2."
    assert "".join(d.get("content", "") for d in deltas) == "42"
    assert completion(srv, http, "reasoning").json()["choices"][0]["text"] == "answer 0: 42"


# --- the openai SDK understands it ---------------------------------------------------------------


def test_openai_sdk_parses_ok(srv: FaultyServer) -> None:
    with openai.OpenAI(base_url=srv.base_url("ok"), api_key="x", max_retries=0) as client:
        result = client.completions.create(model="m", prompt="hi there", n=2, max_tokens=8)
        assert [c.text for c in result.choices] == ["answer 0: 42", "answer 1: 42"]
        assert result.usage is not None
        assert result.usage.completion_tokens == 8

        stream = client.completions.create(
            model="m", prompt="hi", stream=True, stream_options={"include_usage": True}
        )
        text = ""
        usage = None
        for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        assert text == "answer 0: 42"
        assert usage is not None
        assert usage.total_tokens == 5

        chat_stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chat_stream if c.choices) == "answer 0: 42"


def test_openai_sdk_maps_faults(srv: FaultyServer) -> None:
    expected = {
        "status-503-1": openai.InternalServerError,
        "ratelimit-0.1-1": openai.RateLimitError,
        "auth": openai.AuthenticationError,
        "context-too-long": openai.BadRequestError,
        "drop-1": openai.APIConnectionError,
    }
    for scenario, error in expected.items():
        with (
            openai.OpenAI(base_url=srv.base_url(scenario), api_key="x", max_retries=0) as client,
            pytest.raises(error),
        ):
            client.completions.create(model="m", prompt="hi")


async def test_async_client_on_the_test_loop(srv: FaultyServer) -> None:
    # The server has its own loop in its own thread, so an async test's loop can drive a client freely.
    async with openai.AsyncOpenAI(base_url=srv.base_url("slow-0.05"), api_key="x", max_retries=0) as client:
        result = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert result.choices[0].message.content == "answer 0: 42"
