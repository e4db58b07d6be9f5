"""The endpoint layer against a real, deliberately misbehaving loopback server (tests/support).

Every test asserts what the caller sees *and* how many requests the server received, so retries
that should happen do, and ones that should not (4xx, malformed answers) do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dynasor_client import Capabilities, Endpoint
from dynasor_client._exceptions import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    EndpointError,
    EndpointTimeout,
    EndpointUnavailable,
    MalformedResponse,
    RateLimited,
    ServerError,
)
from dynasor_client.endpoints import (
    ConnectFailed,
    RetryPolicy,
    SamplingParams,
    TLSVerificationFailed,
    TokenLogprob,
)
from dynasor_client.endpoints._capabilities import Detection, Reprobe
from tests.support.faulty_server import GOOD_API_KEY, MODEL_ID, REASONING_TEXT, FaultyServer

PROMPT = "what is forty two"
MESSAGES = [{"role": "user", "content": "what is forty two"}]
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=2, jitter_s=0.01, max_total_s=10)
STREAM = pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])


@pytest.fixture(autouse=True)
def _fresh(faulty_server: FaultyServer) -> Iterator[None]:
    # Fault counters live for the whole session; each test starts from zero.
    faulty_server.reset()
    yield
    assert faulty_server.errors() == []


def endpoint(server: FaultyServer, scenario: str, **kwargs: Any) -> Endpoint:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("capabilities", Capabilities())
    kwargs.setdefault("timeout", 5.0)
    return Endpoint(server.base_url(scenario), model=MODEL_ID, **kwargs)


def generation_bodies(server: FaultyServer, scenario: str) -> list[dict[str, Any]]:
    return [r.json for r in server.requests(scenario) if r.path.endswith("completions")]


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# --- retried faults --------------------------------------------------------------------------------


@STREAM
@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_transient_5xx_is_retried(faulty_server: FaultyServer, code: int, stream: bool) -> None:
    scenario = f"status-{code}-2"
    async with endpoint(faulty_server, scenario) as ep:
        generation = await ep.complete(PROMPT, max_tokens=8, stream=stream)
    assert generation.texts == ["answer 0: 42"]
    assert generation.requests == 1  # one logical HTTP request, retried under the hood
    assert faulty_server.generation_count(scenario) == 3


@STREAM
async def test_persistent_503_raises_server_error_after_max_attempts(
    faulty_server: FaultyServer, stream: bool
) -> None:
    async with endpoint(faulty_server, "status-503-99") as ep:
        with pytest.raises(ServerError) as info:
            await ep.complete(PROMPT, stream=stream)
    assert info.value.status == 503
    assert info.value.request_id is not None
    assert faulty_server.generation_count("status-503-99") == FAST.max_attempts


@STREAM
async def test_rate_limit_honours_retry_after(faulty_server: FaultyServer, stream: bool) -> None:
    scenario = "ratelimit-0.3-1"
    async with endpoint(faulty_server, scenario) as ep:
        generation = await ep.complete(PROMPT, stream=stream)
    assert generation.texts == ["answer 0: 42"]
    assert faulty_server.generation_count(scenario) == 2
    first, second = faulty_server.requests(scenario)
    # The backoff alone would be ~0.01 s: the gap is the server's Retry-After.
    assert second.received_at - first.received_at >= 0.3


@STREAM
async def test_retry_after_beyond_max_backoff_gives_up_at_once(
    faulty_server: FaultyServer, stream: bool
) -> None:
    scenario = "ratelimit-5-1"
    started = time.monotonic()
    async with endpoint(faulty_server, scenario) as ep:
        with pytest.raises(RateLimited) as info:
            await ep.complete(PROMPT, stream=stream)
    assert time.monotonic() - started < 1.0
    assert info.value.retry_after == 5
    assert info.value.status == 429
    assert "requests_per_second" in str(info.value)  # says what to do
    assert faulty_server.generation_count(scenario) == 1


@STREAM
async def test_dropped_connection_is_retried(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "drop-1") as ep:
        generation = await ep.complete(PROMPT, stream=stream)
        chat = await ep.chat(MESSAGES, stream=stream)  # the fault budget is spent: plain success
    assert generation.texts == ["answer 0: 42"]
    assert generation.choices[0].num_tokens == 4
    assert chat.texts == ["answer 0: 42"]
    assert faulty_server.generation_count("drop-1") == 3


@STREAM
async def test_connection_always_dropped_raises_unavailable(
    faulty_server: FaultyServer, stream: bool
) -> None:
    async with endpoint(faulty_server, "drop-99") as ep:
        with pytest.raises(EndpointUnavailable) as info:
            await ep.complete(PROMPT, stream=stream)
    assert "reachable" in str(info.value)
    assert faulty_server.generation_count("drop-99") == FAST.max_attempts


@STREAM
async def test_slow_server_times_out(faulty_server: FaultyServer, stream: bool) -> None:
    retry = RetryPolicy(
        max_attempts=2, initial_backoff_s=0.01, max_backoff_s=2, jitter_s=0.01, max_total_s=10
    )
    started = time.monotonic()
    async with endpoint(faulty_server, "slow-3", timeout=0.3, retry=retry) as ep:
        with pytest.raises(EndpointTimeout) as info:
            await ep.complete(PROMPT, stream=stream)
    assert time.monotonic() - started < 2.0
    assert "timeout" in str(info.value)
    assert faulty_server.generation_count("slow-3") == 2


@STREAM
async def test_slow_server_within_timeout_succeeds(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "slow-0.2", timeout=2.0) as ep:
        generation = await ep.complete(PROMPT, stream=stream)
    assert generation.texts == ["answer 0: 42"]
    assert generation.latency_s >= 0.2
    assert faulty_server.generation_count("slow-0.2") == 1


# --- faults that are not retried -------------------------------------------------------------------


@STREAM
@pytest.mark.parametrize("code", [400, 404, 422])
async def test_other_4xx_are_not_retried(faulty_server: FaultyServer, code: int, stream: bool) -> None:
    scenario = f"status-{code}-99"
    async with endpoint(faulty_server, scenario) as ep:
        with pytest.raises(BadRequest) as info:
            await ep.complete(PROMPT, stream=stream)
    assert type(info.value) is BadRequest
    assert info.value.status == code
    assert faulty_server.generation_count(scenario) == 1


@STREAM
async def test_wrong_api_key_fails_at_once(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "auth", api_key="wrong-key") as ep:
        with pytest.raises(AuthenticationFailed) as info:
            await ep.complete(PROMPT, stream=stream)
    assert isinstance(info.value, BadRequest)
    assert info.value.status == 401
    assert "OPENAI_API_KEY" in str(info.value)  # says what to do
    assert len(generation_bodies(faulty_server, "auth")) == 1


@STREAM
async def test_good_api_key_succeeds(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "auth", api_key=GOOD_API_KEY) as ep:
        generation = await ep.complete(PROMPT, stream=stream)
    assert generation.texts == ["answer 0: 42"]
    assert faulty_server.generation_count("auth") == 1


async def test_api_key_comes_from_the_environment(
    faulty_server: FaultyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_API_KEY)
    async with endpoint(faulty_server, "auth") as ep:
        generation = await ep.chat(MESSAGES)
    assert generation.texts == ["answer 0: 42"]
    (request,) = faulty_server.requests("auth")
    assert request.headers["authorization"] == f"Bearer {GOOD_API_KEY}"


async def test_api_key_is_never_logged_nor_shown(
    faulty_server: FaultyServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-very-secret-0123456789"
    caplog.set_level(logging.DEBUG)  # every logger, dynasor_client's included
    caplog.set_level(logging.DEBUG, logger="dynasor_client")
    async with endpoint(faulty_server, "status-503-1", api_key=secret) as ep:
        assert secret not in repr(ep)
        assert secret not in str(ep.name)
        await ep.complete(PROMPT, n=2)  # one retry: logs a warning
    async with endpoint(faulty_server, "auth", api_key=secret) as ep:
        with pytest.raises(AuthenticationFailed) as info:
            await ep.complete(PROMPT)
    assert secret not in str(info.value)
    ours = [r for r in caplog.records if r.name.startswith("dynasor_client")]
    assert ours, "expected the retry to be logged"
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(record.__dict__)
    # The server did receive it, as a bearer token.
    assert faulty_server.requests("auth")[0].headers["authorization"] == f"Bearer {secret}"


@STREAM
async def test_context_too_long(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "context-too-long") as ep:
        with pytest.raises(ContextTooLong) as info:
            await ep.chat(MESSAGES, stream=stream)
    assert isinstance(info.value, BadRequest)
    assert info.value.status == 400
    assert "shorten the prompt or lower max_tokens" in str(info.value)
    assert faulty_server.generation_count("context-too-long") == 1


async def test_malformed_json_is_not_retried(faulty_server: FaultyServer) -> None:
    async with endpoint(faulty_server, "malformed") as ep:
        with pytest.raises(MalformedResponse) as info:
            await ep.complete(PROMPT, stream=False)
    assert "not JSON" in str(info.value)
    assert faulty_server.generation_count("malformed") == 1


async def test_malformed_answer_to_a_stream_is_a_clear_error(faulty_server: FaultyServer) -> None:
    # Asked to stream, the server answers with a broken (non-SSE) JSON body: no event ever arrives.
    async with endpoint(faulty_server, "malformed") as ep:
        with pytest.raises(MalformedResponse) as info:
            await asyncio.wait_for(ep.chat(MESSAGES, stream=True), timeout=3)
    assert "without any data" in str(info.value)
    assert faulty_server.generation_count("malformed") == 1


@pytest.mark.parametrize("n", [1, 3])
async def test_json_of_the_wrong_shape_is_malformed(
    faulty_server: FaultyServer, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    # Valid JSON, wrong shape: must be a MalformedResponse, not a bare (grouped) ValueError.
    async def wrong_shape(kind: str, body: dict[str, Any], **_: Any) -> list[dict[str, Any]]:
        choices = [{"index": i, "text": "x", "token_ids": ["not-an-id"]} for i in range(body["n"])]
        return [{"model": MODEL_ID, "choices": choices}]

    async with endpoint(faulty_server, "ok") as ep:
        monkeypatch.setattr(ep, "raw_generate", wrong_shape)
        with pytest.raises(MalformedResponse, match="malformed"):
            await ep.complete(PROMPT, n=n)


# --- normalisation ---------------------------------------------------------------------------------


def assert_logprobs(logprobs: tuple[TokenLogprob, ...] | None, text: str, top: int) -> None:
    assert logprobs is not None
    assert "".join(lp.token for lp in logprobs) == text
    for lp in logprobs:
        assert lp.logprob < 0
        assert len(lp.top) == top
        assert lp.top[0] == (lp.token, lp.logprob)  # the chosen token leads its alternatives


@STREAM
async def test_legacy_logprobs_shape(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "legacy-logprobs") as ep:
        generation = await ep.complete(PROMPT, top_logprobs=2, stream=stream)
    (choice,) = generation.choices
    assert choice.text == "answer 0: 42"
    assert_logprobs(choice.logprobs, choice.text, top=2)
    assert choice.logprobs is not None
    assert [lp.token for lp in choice.logprobs] == ["answer", " 0", ":", " 42"]
    assert choice.num_tokens == 4
    assert generation_bodies(faulty_server, "legacy-logprobs")[0]["logprobs"] == 2
    assert faulty_server.generation_count("legacy-logprobs") == 1


@STREAM
async def test_chat_logprobs_shape(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "ok") as ep:
        chat = await ep.chat(MESSAGES, top_logprobs=2, stream=stream)
        # llama.cpp answers /v1/completions in the chat shape too.
        completion = await ep.complete(PROMPT, top_logprobs=2, stream=stream)
    for generation in (chat, completion):
        (choice,) = generation.choices
        assert_logprobs(choice.logprobs, "answer 0: 42", top=2)
        assert choice.token_ids == (100, 101, 102, 103)  # the chat shape carries ids
        assert choice.num_tokens == 4
    chat_body, completion_body = generation_bodies(faulty_server, "ok")
    assert chat_body["logprobs"] is True and chat_body["top_logprobs"] == 2
    assert completion_body["logprobs"] == 2


@STREAM
async def test_n_above_the_server_limit_is_split(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "max-n-2") as ep:
        assert (await ep.capabilities()).max_n is None
        generation = await ep.complete(PROMPT, n=5, stream=stream)
        assert (await ep.capabilities()).max_n == 2  # learnt from the refusal
    assert [c.index for c in generation.choices] == [0, 1, 2, 3, 4]
    assert all(c.text.endswith(": 42") and c.num_tokens == 4 for c in generation.choices)
    assert generation.requests == 3
    assert generation.usage.completion_tokens == 20
    # The refused n=5 request, then n=2, 2, 1.
    assert faulty_server.generation_count("max-n-2") == 4
    bodies = generation_bodies(faulty_server, "max-n-2")
    assert bodies[0]["n"] == 5
    assert sorted(b["n"] for b in bodies[1:]) == [1, 2, 2]


async def test_split_n_with_seed_gets_distinct_seeds(faulty_server: FaultyServer) -> None:
    async with endpoint(faulty_server, "max-n-2") as ep:
        generation = await ep.complete(PROMPT, n=5, seed=10, stream=False)
        # The limit is known now: the next request is split from the start.
        again = await ep.complete(PROMPT, n=3, seed=7, stream=False)
    assert len(generation.choices) == 5 and generation.requests == 3
    assert [c.index for c in again.choices] == [0, 1, 2]
    assert faulty_server.generation_count("max-n-2") == 4 + 2
    bodies = generation_bodies(faulty_server, "max-n-2")
    assert (bodies[0]["n"], bodies[0]["seed"]) == (5, 10)
    assert sorted((b["seed"], b["n"]) for b in bodies[1:4]) == [(10, 2), (12, 2), (14, 1)]
    assert sorted((b["seed"], b["n"]) for b in bodies[4:]) == [(7, 2), (9, 1)]
    # The same numbering a program uses across its requests (sample i: seed + i).
    assert SamplingParams(seed=10).for_sample(2).seed == 12 and SamplingParams().for_sample(2).seed is None


@STREAM
async def test_reasoning_field(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "reasoning") as ep:
        generation = await ep.chat(MESSAGES, stream=stream)
    (choice,) = generation.choices
    assert choice.reasoning == REASONING_TEXT
    assert choice.text == "42"
    assert choice.finish_reason == "stop"
    assert faulty_server.generation_count("reasoning") == 1


@STREAM
@pytest.mark.parametrize("kind", ["completions", "chat"])
async def test_usage_counts_each_choice(faulty_server: FaultyServer, kind: str, stream: bool) -> None:
    async with endpoint(faulty_server, "ok") as ep:
        if kind == "chat":
            generation = await ep.chat(MESSAGES, n=3, stream=stream)
        else:
            generation = await ep.complete(PROMPT, n=3, stream=stream)
    assert [c.text for c in generation.choices] == [f"answer {i}: 42" for i in range(3)]
    assert [c.num_tokens for c in generation.choices] == [4, 4, 4]
    assert generation.usage.completion_tokens == sum(c.num_tokens for c in generation.choices) == 12
    assert generation.usage.prompt_tokens > 0
    # Per-token info was asked for, to count each choice, but the caller did not want logprobs.
    (body,) = generation_bodies(faulty_server, "ok")
    assert "logprobs" in body
    assert all(c.logprobs is None for c in generation.choices)
    if stream:
        assert body["stream_options"] == {"include_usage": True}
        assert generation.ttft_s is not None


# --- load control and cancellation -----------------------------------------------------------------


async def test_in_flight_bound(faulty_server: FaultyServer) -> None:
    scenario = "slow-0.3"
    started = time.monotonic()
    async with endpoint(faulty_server, scenario, max_in_flight=2) as ep:
        generations = await asyncio.gather(*(ep.complete(PROMPT) for _ in range(6)))
    elapsed = time.monotonic() - started
    assert all(g.texts == ["answer 0: 42"] for g in generations)
    assert faulty_server.generation_count(scenario) == 6
    assert elapsed >= 0.9  # three waves of two
    received = sorted(r.received_at for r in faulty_server.requests(scenario))
    # Each request takes 0.3 s of service: no three start within less than that.
    assert all(later - earlier >= 0.25 for earlier, later in zip(received, received[2:], strict=False))


async def test_requests_per_second(faulty_server: FaultyServer) -> None:
    started = time.monotonic()
    async with endpoint(faulty_server, "ok", requests_per_second=5) as ep:
        await asyncio.gather(*(ep.complete(PROMPT, stream=False) for _ in range(6)))
    assert time.monotonic() - started >= 0.8
    assert faulty_server.generation_count("ok") == 6


@STREAM
async def test_cancellation_returns_promptly(faulty_server: FaultyServer, stream: bool) -> None:
    async with endpoint(faulty_server, "slow-5") as ep:
        task = asyncio.create_task(ep.complete(PROMPT, stream=stream))
        await eventually(lambda: faulty_server.generation_count("slow-5") == 1)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5
        assert ep.outstanding == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert faulty_server.generation_count("slow-5") == 1  # not retried


# --- bad input -------------------------------------------------------------------------------------


async def test_bad_input_gets_clear_errors(faulty_server: FaultyServer) -> None:
    async with endpoint(faulty_server, "ok") as ep:
        with pytest.raises(ValueError, match="n must be >= 1"):
            await ep.complete(PROMPT, n=0)
        with pytest.raises(ValueError, match="empty"):
            await ep.complete("")
        with pytest.raises(ValueError, match="empty"):
            await ep.complete([])
        with pytest.raises(TypeError, match="extra_body"):
            await ep.complete(PROMPT, top_k=5)
        with pytest.raises(TypeError, match="extra_body"):
            await ep.chat(MESSAGES, frequency_penalty=0.5)
        with pytest.raises(ValueError, match="max_tokens"):
            await ep.complete(PROMPT, max_tokens=0)
        with pytest.raises(ValueError, match="message"):
            await ep.chat([])
        with pytest.raises(TypeError, match="token ids"):
            await ep.complete(["not", "ids"])  # type: ignore[list-item]
    assert faulty_server.requests("ok") == []


def test_errors_share_one_base() -> None:
    for error in (
        AuthenticationFailed,
        ContextTooLong,
        EndpointTimeout,
        EndpointUnavailable,
        MalformedResponse,
        RateLimited,
        ServerError,
    ):
        assert issubclass(error, EndpointError)


# --- capability detection ----------------------------------------------------------------------------


async def test_detection_on_a_server_that_refuses_every_probe_assumes_defaults(
    faulty_server: FaultyServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Like the replay engine, which only answers recorded questions: learn nothing, guess nothing.
    caplog.set_level(logging.WARNING, logger="dynasor_client")
    async with endpoint(faulty_server, "status-400-99", capabilities="detect", retry=RetryPolicy(1)) as ep:
        caps = await ep.capabilities()
    assert caps == Capabilities()
    assert any("capability probes got no answer" in r.getMessage() for r in caplog.records)
    assert faulty_server.generation_count("status-400-99") == 2  # one probe per route, then nothing


async def test_detection_learns_what_a_healthy_server_supports(faulty_server: FaultyServer) -> None:
    async with endpoint(faulty_server, "ok", capabilities="detect") as ep:
        caps = await ep.capabilities()
    assert caps.completions and caps.chat
    assert caps.max_top_logprobs == 20 and caps.streaming_usage
    assert caps.token_id_prompts and caps.generated_token_ids == "logprobs"  # ids ride in its logprobs
    assert not caps.tokenize and caps.chat_template is None  # no /tokenize, no /apply-template (404)
    assert not caps.token_exact_continuation  # prompts could not be tokenised
    assert caps.assistant_prefill and not caps.prefill_echoes


# --- loopback helpers: canned answers, and a relay that can come up on a chosen port ---------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _read_request(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    return head.split(b" ")[1].decode()


@contextlib.asynccontextmanager
async def canned_server(answer: Callable[[str], bytes]) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering each request with ``answer(path)`` (raw bytes, then close);
    yields its base URL and the paths it was asked for."""
    paths: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path = await _read_request(reader)
            paths.append(path)
            writer.write(answer(path))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", paths
    finally:
        server.close()
        await server.wait_closed()


def http_answer(body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


class Relay:
    """A TCP relay on 127.0.0.1:``port`` to ``target_port``: a real server that can be started on a
    port that was closed a moment ago. Counts the connections it accepted."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port, self.target_port = port, target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum("retrying in" in r.getMessage() for r in caplog.records)


# --- a server that is down, then up ------------------------------------------------------------------


async def test_connection_refused_fails_fast_with_one_retry(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dynasor_client")
    url = f"http://127.0.0.1:{_free_port()}/v1"
    retry = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, jitter_s=0.01)
    async with Endpoint(url, model=MODEL_ID, capabilities=Capabilities(), retry=retry) as ep:
        with pytest.raises(ConnectFailed, match="cannot connect") as info:
            await ep.complete(PROMPT)
        assert isinstance(info.value, EndpointUnavailable)
        assert retries_logged(caplog) == 1  # connect_attempts=2, not max_attempts=5
    caplog.clear()
    once = RetryPolicy(max_attempts=5, connect_attempts=1)
    async with Endpoint(url, model=MODEL_ID, capabilities=Capabilities(), retry=once) as ep:
        with pytest.raises(ConnectFailed):
            await ep.chat(MESSAGES)
    async with Endpoint(url, capabilities=Capabilities(), retry=once) as ep:
        with pytest.raises(ConnectFailed):
            await ep.model_name()  # no model given: the lookup fails the same way, not retried
    assert retries_logged(caplog) == 0


async def test_no_model_and_server_down_is_not_retries_times_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The 59.9 s 502: each generation attempt looked the model up under its own 5 retries.
    caplog.set_level(logging.WARNING, logger="dynasor_client")
    url = f"http://127.0.0.1:{_free_port()}/v1"
    async with Endpoint(url, capabilities=Capabilities(), retry=FAST) as ep:
        with pytest.raises(ConnectFailed):
            await ep.complete(PROMPT)
    assert retries_logged(caplog) == 1


async def test_detection_during_an_outage_is_not_cached(
    faulty_server: FaultyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dynasor_client")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/ok/v1"
    async with Endpoint(url, model=MODEL_ID, retry=FAST, reprobe_after_s=0) as ep:
        with pytest.raises(ConnectFailed):  # the server is down: a clear error, at once
            await ep.capabilities()
        with pytest.raises(ConnectFailed):
            await ep.complete(PROMPT)  # probed again (no backoff here), still down
        async with Relay(port, faulty_server.port) as relay:  # the server comes up on that port
            caps = await ep.capabilities()
            assert caps.completions and caps.chat and caps.assistant_prefill  # detected for real
            assert relay.connections > 0
            generation = await ep.complete(PROMPT, max_tokens=8)
            assert generation.texts == ["answer 0: 42"]
            probes = len(faulty_server.requests("ok"))
            assert await ep.capabilities() is caps  # a success is cached: no more probes
            assert len(faulty_server.requests("ok")) == probes
    assert any("capability detection failed" in r.getMessage() for r in caplog.records)


async def test_detection_is_not_retried_before_its_backoff(faulty_server: FaultyServer) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/ok/v1"
    async with Endpoint(url, model=MODEL_ID, retry=FAST, reprobe_after_s=3600) as ep:
        with pytest.raises(ConnectFailed):
            await ep.capabilities()
        async with Relay(port, faulty_server.port) as relay:
            # Within the backoff the failure is answered at once, without touching the server.
            with pytest.raises(EndpointUnavailable, match="probing again in"):
                await ep.capabilities()
            with pytest.raises(EndpointUnavailable, match="probing again in"):
                await ep.complete(PROMPT)
            assert relay.connections == 0


async def test_partly_failed_detection_is_provisional(faulty_server: FaultyServer) -> None:
    # The first generation probe gets a 503: what answered is used, and the rest is asked again.
    async with endpoint(faulty_server, "status-503-1", capabilities="detect", reprobe_after_s=0) as ep:
        first = await ep.capabilities()
        assert first.completions != first.chat  # one of the two routes got the 503
        seen = faulty_server.generation_count("status-503-1")
        second = await ep.capabilities()
        assert second.completions and second.chat
        assert faulty_server.generation_count("status-503-1") > seen  # probed again
        seen = faulty_server.generation_count("status-503-1")
        assert await ep.capabilities() is second
        assert faulty_server.generation_count("status-503-1") == seen  # then cached


def test_reprobe_backoff_doubles_up_to_its_cap() -> None:
    reprobe = Reprobe(first_s=2.0, max_s=30.0)
    failure = Detection(Capabilities(), answered=False, error=EndpointUnavailable("down"))
    assert reprobe.due(0.0)
    delays = [reprobe.failed(100.0, failure) for _ in range(6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert not reprobe.due(129.9) and reprobe.due(130.0)
    assert reprobe.wait_s(120.0) == 10.0
    reprobe.succeeded()
    assert reprobe.due(0.0) and reprobe.failed(0.0, failure) == 2.0  # a success starts over


# --- what is refused at once ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["localhost:8000/v1", "127.0.0.1:8000/v1", "ftp://127.0.0.1/v1", "http:///v1", "http://h:99999/v1"]
)
def test_url_without_scheme_or_host_fails_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        Endpoint(url)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Endpoint("http://127.0.0.1:8000/v1", timeout=timeout)


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@STREAM
async def test_tls_verification_failure_is_not_retried(
    faulty_server: FaultyServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="dynasor_client")
    tls_server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=_self_signed(tmp_path)
    )
    try:
        async with Relay(_free_port(), tls_server.sockets[0].getsockname()[1]) as relay:
            url = f"https://127.0.0.1:{relay.port}/v1"
            async with Endpoint(url, model=MODEL_ID, capabilities=Capabilities(), retry=FAST) as ep:
                with pytest.raises(TLSVerificationFailed, match="TLS certificate verification failed"):
                    await ep.complete(PROMPT, stream=stream)
            assert relay.connections == 1  # one attempt: the same certificate would fail again
    finally:
        tls_server.close()
        await tls_server.wait_closed()
    assert retries_logged(caplog) == 0


# --- answers that are not answers --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["completions", "chat"])
@STREAM
async def test_invalid_utf8_is_malformed(kind: str, stream: bool) -> None:
    text = b'{"choices":[{"index":0,"text":"\xff\xfe","message":{"role":"assistant","content":"\xff"}}]}'
    if stream:
        answer = http_answer(b"data: " + text + b"\n\ndata: [DONE]\n\n", "text/event-stream")
    else:
        answer = http_answer(text)
    async with (
        canned_server(lambda path: answer) as (url, paths),
        Endpoint(url, model=MODEL_ID, capabilities=Capabilities(), retry=FAST) as ep,
    ):
        with pytest.raises(MalformedResponse):
            if kind == "chat":
                await ep.chat(MESSAGES, stream=stream)
            else:
                await ep.complete(PROMPT, stream=stream)
    assert len(paths) == 1  # not retried


@pytest.mark.parametrize("kind", ["completions", "chat"])
@STREAM
async def test_a_choice_without_message_or_text_is_malformed(kind: str, stream: bool) -> None:
    body = b'{"choices":[{"index":0}]}'
    events = b"data: " + body + b"\n\ndata: [DONE]\n\n"
    answer = http_answer(events, "text/event-stream") if stream else http_answer(body)
    async with (
        canned_server(lambda path: answer) as (url, paths),
        Endpoint(url, model=MODEL_ID, capabilities=Capabilities(), retry=FAST) as ep,
    ):
        with pytest.raises(MalformedResponse, match="choice 0 has no"):
            if kind == "chat":
                await ep.chat(MESSAGES, stream=stream)
            else:
                await ep.complete(PROMPT, stream=stream)
    assert len(paths) == 1


async def test_root_route_with_invalid_utf8_is_malformed() -> None:
    async with (
        canned_server(lambda path: http_answer(b'{"tokens": "\xff"}')) as (url, _),
        Endpoint(url, model=MODEL_ID, capabilities=Capabilities()) as ep,
    ):
        with pytest.raises(MalformedResponse, match="not JSON"):
            await ep.tokenize("hi")
