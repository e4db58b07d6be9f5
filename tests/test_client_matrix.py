"""Real third-party clients through the proxy (issue 21): the openai SDK, LangChain's ``ChatOpenAI``
and an openai-agents ``Agent`` on ``OpenAIChatCompletionsModel``, each asking plain, streaming,
tools, technique (``+sc2``), technique + tools and a deadline it cannot meet, against the local
llama.cpp model and the tool-calling loopback upstream (:mod:`tests.support.tool_server`).

Every cell's outcome is checked against :data:`EXPECTED`, the table of docs/proxy.md ("Clients");
``pytest tests/test_client_matrix.py -s`` prints it. The tools cells run both unstreamed and
streamed (one outcome when both agree). The local model is run without tool-call parsing
(llama.cpp's ``--jinja`` is off), so it answers tool requests in text: those cells check that the
request goes through (no ``logprobs`` with tools + stream), the loopback upstream's that the calls
come back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from dynasor_client import Capabilities, LocalLlamaServer
from dynasor_client.proxy import ProxyConfig, ProxyServer
from tests.support.tool_server import ToolServer

set_tracing_disabled(True)  # openai-agents would export traces to OpenAI

CLIENTS = ("openai", "langchain", "agents")
SCENARIOS = ("plain", "streaming", "tools", "technique", "technique+tools", "deadline")
UPSTREAMS = ("local", "loopback")
MAX_TOKENS = 16
QUESTION = "What is the weather in Paris?"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TEXT, CALL, RAN, LATE = "text", "tool call get_weather(Paris)", "tool ran, then text", "504 deadline_exceeded"
#: What each client gets, by upstream and scenario (docs/proxy.md, "Clients").
EXPECTED = {
    "local": {client: {s: LATE if s == "deadline" else TEXT for s in SCENARIOS} for client in CLIENTS},
    "loopback": {
        client: {
            "plain": TEXT,
            "streaming": TEXT,
            "tools": RAN if client == "agents" else CALL,
            "technique": TEXT,
            "technique+tools": RAN if client == "agents" else CALL,
            "deadline": LATE,
        }
        for client in CLIENTS
    },
}


@tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return "sunny"


@function_tool(name_override="get_weather")
def agent_weather(city: str) -> str:
    """The weather of a city."""
    return "sunny"


class Cell:
    """One request of the matrix: a client, a model name (``+sc2`` for a technique), tools or not,
    streamed or not, and the headers its client sends (the deadline)."""

    def __init__(self, proxy: ProxyServer, model: str, *, headers: dict[str, str] | None = None) -> None:
        self.proxy, self.model, self.headers = proxy, model, headers or {}

    def openai_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.proxy.base_url, api_key="none", max_retries=0, default_headers=self.headers
        )

    async def openai(self, *, tools: bool, stream: bool, technique: bool) -> str:
        async with self.openai_client() as client:
            args: dict[str, Any] = {
                "model": self.model,
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": MAX_TOKENS,
                **({"tools": [TOOL]} if tools else {}),
            }
            if stream:
                response = await client.chat.completions.with_raw_response.create(
                    **args, stream=True, stream_options={"include_usage": True}
                )
                chunks = [c async for c in response.parse()]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                calls: dict[int, list[str]] = {}  # index -> name, arguments (streamed in pieces)
                for c in chunks:
                    for t in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                        name, arguments = calls.setdefault(t.index, ["", ""])
                        function = t.function
                        if function is not None:
                            calls[t.index] = [
                                name or function.name or "",
                                arguments + (function.arguments or ""),
                            ]
                named = [(name, arguments) for name, arguments in calls.values()]
                usage = chunks[-1].usage
            else:
                response = await client.chat.completions.with_raw_response.create(**args)
                answer = response.parse()
                message = answer.choices[0].message
                text, usage = message.content or "", answer.usage
                named = [(t.function.name, t.function.arguments) for t in message.tool_calls or []]
        assert usage is not None and usage.completion_tokens > 0, usage
        if technique:
            assert response.headers["x-dynasor-technique"] == "sc", response.headers
        return _outcome(text, [(name, json.loads(arguments or "{}")) for name, arguments in named])

    def langchain_model(self) -> ChatOpenAI:
        return ChatOpenAI(
            model=self.model,
            base_url=self.proxy.base_url,
            api_key="none",  # type: ignore[arg-type]
            max_retries=0,
            max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
            default_headers=self.headers,
            include_response_headers=True,
            stream_usage=True,
        )

    async def langchain(self, *, tools: bool, stream: bool, technique: bool) -> str:
        model = self.langchain_model()
        runnable: Any = model.bind_tools([get_weather]) if tools else model
        if stream:
            chunks: list[AIMessageChunk] = [c async for c in runnable.astream(QUESTION)]
            message: AIMessage = chunks[0]
            for chunk in chunks[1:]:
                message = message + chunk  # type: ignore[assignment, operator]
        else:
            message = await runnable.ainvoke(QUESTION)
        assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
        if technique:
            assert message.response_metadata["headers"]["x-dynasor-technique"] == "sc"
        text = message.content if isinstance(message.content, str) else str(message.content)
        return _outcome(text, [(c["name"], c["args"]) for c in message.tool_calls])

    async def agents(self, *, tools: bool, stream: bool, technique: bool) -> str:
        async with self.openai_client() as client:
            agent = Agent(
                name="weather",
                instructions="Answer briefly.",
                model=OpenAIChatCompletionsModel(model=self.model, openai_client=client),
                tools=[agent_weather] if tools else [],
                model_settings=ModelSettings(max_tokens=MAX_TOKENS, include_usage=True),
            )
            if stream:
                result: Any = Runner.run_streamed(agent, QUESTION)
                async for _ in result.stream_events():
                    pass
            else:
                result = await Runner.run(agent, QUESTION)
        ran = any(isinstance(i, ToolCallItem) for i in result.new_items) and any(
            isinstance(i, ToolCallOutputItem) and i.output == "sunny" for i in result.new_items
        )
        assert isinstance(result.final_output, str) and result.final_output.strip(), result.final_output
        assert sum(r.usage.output_tokens for r in result.raw_responses) > 0
        return RAN if ran else TEXT


def _outcome(text: str, calls: list[tuple[str, Any]]) -> str:
    if calls:
        assert calls == [("get_weather", {"city": "Paris"})], calls
        return CALL
    assert text.strip(), "an empty answer"
    return TEXT


async def _run(cell: Callable[..., Awaitable[str]], **how: bool) -> str:
    """A cell's outcome, or what went wrong (the table shows every cell, failed or not)."""
    try:
        return await cell(**how)
    except openai.APIStatusError as exc:
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        return f"{exc.status_code} {code}"
    except Exception as exc:  # reported in the table, then failed by the comparison
        return f"FAILED {type(exc).__name__}: {str(exc)[:80]}"


async def _matrix(proxy: ProxyServer, late: ProxyServer, model: str) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for client in CLIENTS:
        row = table[client] = {}
        for scenario in SCENARIOS:
            technique = scenario.startswith("technique") or scenario == "deadline"
            cell = Cell(
                late if scenario == "deadline" else proxy,
                f"{model}+sc2" if technique else model,
                headers={"X-Dynasor-Deadline-S": "0.02"} if scenario == "deadline" else None,
            )
            run = getattr(cell, client)
            tools = scenario.endswith("tools")
            outcomes = [await _run(run, tools=tools, stream=scenario == "streaming", technique=technique)]
            if tools:  # the tools cells: streamed too
                outcomes.append(await _run(run, tools=True, stream=True, technique=technique))
            row[scenario] = outcomes[0] if len(set(outcomes)) == 1 else " / ".join(outcomes)
    return table


def table_markdown(tables: dict[str, dict[str, dict[str, str]]]) -> str:
    lines = ["| upstream | client | " + " | ".join(SCENARIOS) + " |", "|---" * (len(SCENARIOS) + 2) + "|"]
    for upstream, table in tables.items():
        for client, row in table.items():
            lines.append(f"| {upstream} | {client} | " + " | ".join(row[s] for s in SCENARIOS) + " |")
    return "\n".join(lines)


@pytest.fixture
async def loopback() -> AsyncIterator[ToolServer]:
    async with ToolServer() as server:
        yield server


async def test_client_matrix(
    local_server: LocalLlamaServer, local_capabilities: Capabilities, loopback: ToolServer
) -> None:
    tables: dict[str, dict[str, dict[str, str]]] = {}
    local = ProxyConfig(upstream=local_server.base_url, capabilities=local_capabilities)
    async with ProxyServer(local) as proxy:
        tables["local"] = await _matrix(proxy, proxy, local_server.model)
    one = Capabilities(max_n=1)  # the loopback answers one choice per request
    async with (
        ProxyServer(ProxyConfig(upstream=loopback.url("tool"), capabilities=one)) as proxy,
        ProxyServer(ProxyConfig(upstream=loopback.url("hang"), capabilities=one)) as late,
    ):
        tables["loopback"] = await _matrix(proxy, late, "tool-model")
    print("\n" + table_markdown(tables))
    assert tables == EXPECTED, table_markdown(tables)
    # Tools went upstream with every tools request, and never with logprobs (tools + stream).
    offered = [r for r in loopback.requests if r.get("tools")]
    assert offered and not any("logprobs" in r for r in offered)
