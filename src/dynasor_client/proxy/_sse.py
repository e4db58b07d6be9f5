"""Server-sent events: framing what the proxy sends, and reading what the upstream streams.

An event is ``data: <one line of JSON>\\n\\n``; a stream ends with ``data: [DONE]\\n\\n`` (OpenAI's
convention, which the openai SDK expects). An error after the stream started is sent as
``data: {"error": {...}}`` (the SDK raises it as an ``APIError``) and the stream ends without
``[DONE]``.

Upstream streams are parsed by ``httpx-sse`` (:func:`upstream_events`); each event is forwarded
re-framed by :func:`frame` (its ``event``, ``id``, ``retry`` and ``data`` fields; comment lines
such as keep-alives are dropped; an ``id`` holds for the events after it, as the SSE spec says,
and is sent with each of them). An event the upstream never ended with its blank line (the
connection closed mid-event) is not an event and is not forwarded; a connection that drops
mid-stream raises ``httpx``'s error, which the pass-through reports as an upstream failure.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MEDIA_TYPE = "text/event-stream"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event(data: Any) -> bytes:
    """One SSE event carrying ``data`` as JSON."""
    return b"data: " + _encode(data).encode("utf-8") + b"\n\n"


def upstream_events(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """The events of an upstream ``text/event-stream`` response, each as soon as it is complete."""
    return EventSource(response).aiter_sse()


def is_done(sse: ServerSentEvent) -> bool:
    """Whether ``sse`` is OpenAI's end marker ``[DONE]``."""
    return sse.data.strip() == "[DONE]"


def payload(sse: ServerSentEvent) -> Any:
    """The event's data as JSON (None when it is empty, ``[DONE]`` or not JSON)."""
    if not sse.data or is_done(sse):
        return None
    try:
        return sse.json()
    except json.JSONDecodeError:
        return None


def frame(sse: ServerSentEvent) -> bytes:
    """``sse`` as it goes to the client (module docs)."""
    lines = [] if sse.event == "message" else [f"event: {sse.event}"]
    if sse.id:
        lines.append(f"id: {sse.id}")
    if sse.retry is not None:
        lines.append(f"retry: {sse.retry}")
    lines += [f"data: {line}" for line in sse.data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode("utf-8")
