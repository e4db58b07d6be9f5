"""Server-sent events: framing what the proxy sends and splitting what the upstream streams.

An event is ``data: <one line of JSON>\\n\\n``; a stream ends with ``data: [DONE]\\n\\n`` (OpenAI's
convention, which the openai SDK expects). An error after the stream started is sent as
``data: {"error": {...}}`` (the SDK raises it as an ``APIError``) and the stream ends without
``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MEDIA_TYPE = "text/event-stream"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event(data: Any) -> bytes:
    """One SSE event carrying ``data`` as JSON."""
    return b"data: " + _encode(data).encode("utf-8") + b"\n\n"


@dataclass(slots=True)
class UpstreamEvent:
    """One event of an upstream stream: its raw text (forwarded as is) and its ``data`` payload."""

    raw: bytes
    data: str | None

    @property
    def done(self) -> bool:
        return self.data is not None and self.data.strip() == "[DONE]"

    def json(self) -> Any:
        """The payload as JSON (None when it is absent, ``[DONE]`` or not JSON)."""
        if self.data is None or self.done:
            return None
        try:
            return json.loads(self.data)
        except json.JSONDecodeError:
            return None


async def upstream_events(lines: AsyncIterator[str]) -> AsyncIterator[UpstreamEvent]:
    """The events of an SSE stream, each as soon as its terminating blank line arrives."""
    raw: list[str] = []
    data: list[str] = []
    async for line in lines:
        if line == "":
            if raw:
                yield UpstreamEvent(
                    ("\n".join(raw) + "\n\n").encode("utf-8"), "\n".join(data) if data else None
                )
                raw, data = [], []
            continue
        raw.append(line)
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if raw:  # a stream that ended without the final blank line
        yield UpstreamEvent(("\n".join(raw) + "\n\n").encode("utf-8"), "\n".join(data) if data else None)
