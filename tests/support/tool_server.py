"""A real OpenAI-compatible chat server that calls a tool whenever the request offers one.

It runs uvicorn on 127.0.0.1 in the test's event loop (``async with ToolServer() as upstream:``),
so a proxy, or a real client through the proxy, talks to it over a genuine loopback socket. The
first path segment names a scenario (``upstream.url("vote")``):

- ``tool``: a request with ``tools`` is answered with a call of the first tool,
  ``{"city": "Paris"}``, its JSON spelt differently from one request to the next (key order aside,
  spacing), so a vote must compare the arguments canonically. After a ``tool`` message (the tool's
  result) it answers in text, ``The tool said: RESULT. The answer is \\boxed{42}.``, so an agent
  loop ends. Without ``tools``: that text answer.
- ``vote``: as ``tool``, but request k (counted from 0) asks for ``CITIES[k % 3]``: Paris, Rome,
  Paris, ... (a vote of three samples: 2 to 1 for Paris).
- ``hang``: no answer until the client leaves (or 30 s): a deadline always passes first.

Each request gets one choice (``n`` is ignored: a proxy in front of it without tools needs
``Capabilities(max_n=1)``). As llama.cpp does, a request with ``tools``, ``stream`` and
``logprobs`` is refused with 400
("logprobs is not supported with tools + stream"). Answers report ``usage``
(:data:`COMPLETION_TOKENS` per answer); streams stream the call's arguments in two pieces and add
the usage chunk when ``stream_options.include_usage`` asks for it. Every request body is recorded
(:attr:`ToolServer.requests`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dynasor_client._serving import HTTPFront, InProcessServer

MODEL_ID = "tool-model"
CITIES = ("Paris", "Rome", "Paris")
COMPLETION_TOKENS = 12
PROMPT_TOKENS = 30
ANSWER = "The answer is \\boxed{42}."
LOGPROBS_REFUSED = "logprobs is not supported with tools + stream"
_SPELLINGS = ('{{"city": "{}"}}', '{{"city":"{}"}}', '{{ "city" : "{}" }}')


class ToolServer(HTTPFront):
    """The tool-calling upstream (module docs)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # every chat request's body, in arrival order
        self._count: dict[str, int] = {}
        routes = [
            Route("/{scenario}/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/{scenario}/v1/models", self._models, methods=["GET"]),
        ]
        self._http = InProcessServer(Starlette(routes=routes), name="tool server")

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    def url(self, scenario: str = "tool") -> str:
        """The API root of ``scenario`` (an OpenAI client's ``base_url``)."""
        return f"{self.root_url}/{scenario}/v1"

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        scenario = request.path_params["scenario"]
        k = self._count[scenario] = self._count.get(scenario, -1) + 1
        tools, stream = body.get("tools"), body.get("stream") is True
        if tools and stream and body.get("logprobs"):
            error = {"code": 400, "message": LOGPROBS_REFUSED, "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        if scenario == "hang":
            for _ in range(600):
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
            return JSONResponse({"error": {"message": "hung up", "type": "server_error"}}, status_code=503)
        messages = body.get("messages") or [{}]
        call: dict[str, Any] | None = None
        if tools and messages[-1].get("role") != "tool":
            city = CITIES[k % len(CITIES)] if scenario == "vote" else "Paris"
            call = {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {
                    "name": tools[0]["function"]["name"],
                    "arguments": _SPELLINGS[k % 3].format(city),
                },
            }
        said = messages[-1].get("content") if messages[-1].get("role") == "tool" else None
        text = f"The tool said: {said}. {ANSWER}" if said else ANSWER
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        if stream:
            options = body.get("stream_options") or {}
            events = _events(call, text, usage if options.get("include_usage") else None)
            return StreamingResponse(events, media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call:
            message["tool_calls"] = [call]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}
        return JSONResponse({**_head("chat.completion"), "choices": [choice], "usage": usage})


def _head(kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": kind,
        "created": int(time.time()),
        "model": MODEL_ID,
    }


async def _events(
    call: dict[str, Any] | None, text: str, usage: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    head = _head("chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else []
        return f"data: {json.dumps({**head, 'choices': choices, **more})}\n\n".encode()

    yield chunk({"role": "assistant", "content": None})
    if call is None:
        for word in re.findall(r"\S+\s*", text):
            yield chunk({"content": word})
    else:
        arguments = call["function"]["arguments"]
        name = call["function"]["name"]
        first = {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        yield chunk({"tool_calls": [first]})
        for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if call else "stop")
    if usage is not None:
        yield chunk({}, usage=usage)
    yield b"data: [DONE]\n\n"
