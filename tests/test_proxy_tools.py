"""Techniques with tools, the ``X-Dynasor-*`` headers and deadline misses (issue 21, parts 1-2).

Against the tool-calling loopback upstream of :mod:`tests.support.tool_server` (and the faulty
server for an upstream error): sc votes over tool calls by name and canonical arguments and answers
a real ``tool_calls`` array with ``finish_reason: "tool_calls"`` and real usage; it never sends
``logprobs`` with tools (the upstream refuses them with tools + stream, as llama.cpp does).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from dynasor_client import Capabilities
from dynasor_client.endpoints import ToolCall, chunk_tokens, tool_calls_key
from dynasor_client.endpoints._parse import ChoiceAccumulator
from dynasor_client.proxy import ProxyConfig, ProxyServer
from tests.support.faulty_server import FaultyServer
from tests.support.tool_server import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, ToolServer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def upstream() -> AsyncIterator[ToolServer]:
    async with ToolServer() as server:
        yield server


def _proxy(url: str) -> ProxyServer:
    return ProxyServer(ProxyConfig(upstream=url, capabilities=Capabilities()))


def test_tool_calls_are_parsed_whole_and_from_stream_pieces() -> None:
    whole = ChoiceAccumulator(chat=True)
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"b": 1, "a": [2]}'}}
    whole.add(
        {"choices": [{"index": 0, "message": {"tool_calls": [call]}}], "usage": {"completion_tokens": 9}}
    )
    streamed = ChoiceAccumulator(chat=True)
    pieces = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"a":[2],'}},
        {"index": 0, "function": {"arguments": '"b":1}'}},
    ]
    for piece in pieces:
        streamed.add({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
    streamed.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    streamed.add({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}})
    (a,) = whole.build(n_requested=1, keep_logprobs=False)
    (b,) = streamed.build(n_requested=1, keep_logprobs=False)
    assert a.tool_calls == (ToolCall("f", '{"b": 1, "a": [2]}', "call_1"),)
    assert b.tool_calls == (ToolCall("f", '{"a":[2],"b":1}', "call_1"),)
    assert b.finish_reason == "tool_calls" and b.num_tokens == 7
    # Key order and spacing do not matter; values and names do.
    assert tool_calls_key(a.tool_calls) == tool_calls_key(b.tool_calls) == 'f({"a":[2],"b":1})'
    assert tool_calls_key((ToolCall("f", '{"a": 3}'),)) != tool_calls_key(b.tool_calls)
    assert tool_calls_key((ToolCall("f", "not json "),)) == "f(not json)"
    assert tool_calls_key(()) is None
    # An aborted stream's tool-call pieces are billed as text (name and arguments: 4 characters a token).
    assert chunk_tokens({"choices": [{"index": 0, "delta": {"tool_calls": pieces[:2]}}]}) == 3


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("algorithm", ["sc", "bon"])
async def test_votes_over_tool_calls(upstream: ToolServer, algorithm: str, stream: bool) -> None:
    async with _proxy(upstream.url("vote")) as proxy, httpx.AsyncClient(timeout=30) as http:
        client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="none", max_retries=0, http_client=http)
        args: dict[str, Any] = {"model": f"m+{algorithm}3", "messages": QUESTION, "tools": TOOLS}
        if stream:
            response: Any = await client.chat.completions.with_raw_response.create(
                **args, max_tokens=32, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in response.parse()]
            calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            usage = chunks[-1].usage
            dynasor = next(c for c in chunks if c.choices and c.choices[0].finish_reason).dynasor
            assert not any(c.choices[0].delta.content for c in chunks if c.choices)
        else:
            response = await client.chat.completions.with_raw_response.create(**args, max_tokens=32)
            answer = response.parse()
            calls = list(answer.choices[0].message.tool_calls or [])
            finish = [answer.choices[0].finish_reason]
            usage, dynasor = answer.usage, answer.dynasor  # type: ignore[attr-defined]
            assert answer.choices[0].message.content is None
    # A vote ends before anything is streamed: the headers tell the outcome, streamed or not.
    headers = response.headers
    assert headers["x-dynasor-technique"] == {"sc": "sc", "bon": "best_of_n"}[algorithm]
    assert headers["x-dynasor-partial"] == "false" and headers["x-dynasor-stop-reason"] == "cap"
    assert headers["x-dynasor-saved-tokens"] == "0" and headers["x-dynasor-extra-tokens"] == "0"
    assert finish == ["tool_calls"]
    (call,) = calls
    assert call.id and call.id.startswith("call_") and call.function is not None
    assert call.function.name == "get_weather"
    city = json.loads(call.function.arguments or "")["city"]
    # The answers are the calls, by name and canonical arguments; the vote: Paris 2, Rome 1 (best-of-N
    # takes the best-scored sample instead).
    paris, rome = 'get_weather({"city":"Paris"})', 'get_weather({"city":"Rome"})'
    assert sorted(dynasor["answers"]) == [paris, paris, rome]
    assert dynasor["answer"] == f'get_weather({{"city":"{city}"}})'
    assert city == "Paris" or algorithm == "bon"
    assert usage is not None and usage.model_extra is not None
    assert usage.model_extra["dynasor_tokens"]["generated"] == 3 * COMPLETION_TOKENS
    # One sample per upstream request, with the tools and never logprobs (refused with tools + stream).
    sampled = [r for r in upstream.requests if "tools" in r]
    assert len(sampled) == 3 and usage.prompt_tokens >= 3 * PROMPT_TOKENS
    assert all(r.get("n") == 1 and "logprobs" not in r and r["tools"] == TOOLS for r in sampled)


async def test_sc_with_tools_answers_text_after_the_tool_result(upstream: ToolServer) -> None:
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    async with _proxy(upstream.url("tool")) as proxy, httpx.AsyncClient(timeout=30) as http:
        body = {"model": "m+sc2", "messages": messages, "tools": TOOLS}
        answer = (await http.post(f"{proxy.base_url}/chat/completions", json=body)).json()
    message = answer["choices"][0]["message"]
    assert message["content"] == f"The tool said: sunny. {ANSWER}" and "tool_calls" not in message
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["dynasor"]["answer"] == "42"


@pytest.mark.parametrize("algorithm", ["cot", "rebase", "mcts"])
async def test_techniques_that_continue_their_own_chat_refuse_tools(
    upstream: ToolServer, algorithm: str
) -> None:
    async with _proxy(upstream.url("tool")) as proxy, httpx.AsyncClient(timeout=30) as http:
        body = {"model": f"m+{algorithm}", "messages": QUESTION, "tools": TOOLS}
        response = await http.post(f"{proxy.base_url}/chat/completions", json=body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "tools" and error["code"] == "tools_unsupported"
    assert "sc or best_of_n" in error["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("progress", [False, True])
async def test_a_deadline_missed_with_no_answer_is_504(
    upstream: ToolServer, stream: bool, progress: bool
) -> None:
    async with _proxy(upstream.url("hang")) as proxy, httpx.AsyncClient(timeout=30) as http:
        body = {"model": "m+sc3", "messages": QUESTION, "stream": stream, "dynasor": {"progress": progress}}
        response = await http.post(
            f"{proxy.base_url}/chat/completions", json=body, headers={"X-Dynasor-Deadline-S": "0.3"}
        )
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert response.headers["x-dynasor-partial"] == "true"
    assert response.headers["x-dynasor-stop-reason"] == "deadline"
    assert response.headers["x-dynasor-technique"] == "sc"


async def test_upstream_errors_do_not_show_the_upstream_url(faulty_server: FaultyServer) -> None:
    url = faulty_server.base_url("status-400-1000")
    async with _proxy(url) as proxy, httpx.AsyncClient(timeout=30) as http:
        body = {"model": "m+sc2", "messages": QUESTION, "tools": TOOLS}
        response = await http.post(f"{proxy.base_url}/chat/completions", json=body)
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "Injected HTTP 400" in message, message
    assert url not in message and str(faulty_server.port) not in message and "the upstream" in message
