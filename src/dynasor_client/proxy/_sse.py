"""Server-sent events: framing what the proxy sends, and reading what the upstream streams.

An event is ``data: <one line of JSON>\\n\\n``; a stream ends with ``data: [DONE]\\n\\n`` (OpenAI's
convention, which the openai SDK expects). An error after the stream started is sent as
``data: {"error": {...}}`` (the SDK raises it as an ``APIError``) and the stream ends without
``[DONE]``.

Upstream streams are split into events by :class:`EventSplitter`, on the bytes as they arrive.
An event that is one ``data: ...`` line (what OpenAI-compatible servers send) is forwarded as its
own bytes, undecoded; any other event is parsed as ``httpx-sse`` parses it and forwarded re-framed
by :func:`frame` (its ``event``, ``id``, ``retry`` and ``data`` fields; comment lines such as
keep-alives are dropped; an ``id`` holds for the events after it, as the SSE spec says, and is sent
with each of them). Either way the client gets the same bytes (:func:`upstream_events`, the
parsing reader, is kept as the reference). An event the upstream never ended with its blank line
(the connection closed mid-event) is not an event and is not forwarded; a connection that drops
mid-stream raises ``httpx``'s error, which the pass-through reports as an upstream failure.
Upstream bytes must be strict UTF-8: an invalid byte ends the stream with a 502
``upstream_invalid_utf8`` error (an error event once the stream has started), never a silently
replaced character. One event may be at most :data:`MAX_EVENT_BYTES`; a longer one (an upstream
that never ends its event) ends the stream with a 502 ``upstream_event_too_large`` as soon as it
passes the limit, and the upstream request is aborted.

A stream request the upstream answers with one whole JSON body instead of events (a server that
ignores ``stream``) is converted by :func:`events_of_body`: a chat completion or legacy completion
becomes one chunk per choice (the message as the ``delta``), its usage chunk, then ``[DONE]``;
anything else (an error object, a body that is not JSON) becomes a 502 error event. The client
never gets an empty stream.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
from httpx_sse import EventSource, ServerSentEvent
from httpx_sse._decoders import SSEDecoder

from ._errors import ProxyError

DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MEDIA_TYPE = "text/event-stream"

#: The most bytes one upstream event may hold (module docs): it bounds what a stream buffers.
MAX_EVENT_BYTES = 4 * 1024 * 1024

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event(data: Any) -> bytes:
    """One SSE event carrying ``data`` as JSON."""
    return b"data: " + _encode(data).encode("utf-8") + b"\n\n"


def invalid_utf8(where: str) -> ProxyError:
    """The error of an upstream answer that is not valid UTF-8 (502: the upstream is at fault)."""
    return ProxyError(
        f"the upstream sent {where} that is not valid UTF-8",
        status=502,
        type="upstream_error",
        code="upstream_invalid_utf8",
    )


def event_too_large(limit: int) -> ProxyError:
    """The error of an upstream event longer than ``limit`` bytes (502: the upstream is at fault)."""
    return ProxyError(
        f"the upstream sent one stream event longer than the proxy's limit of {limit} bytes",
        status=502,
        type="upstream_error",
        code="upstream_event_too_large",
    )


class EventSplitter:
    """An upstream's ``text/event-stream`` bytes, fed as they arrive, split into whole events (module
    docs): each one either the bytes to forward (a plain ``data:`` event, exactly as the upstream
    framed it: ``data: ...\n\n``) or a parsed :class:`ServerSentEvent` (any other event).

    Raises ProxyError 502 on bytes that are not UTF-8 and on an event longer than ``limit`` bytes.
    """

    __slots__ = ("_decoder", "_id", "_rest", "limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._rest = b""  # the start of an event not yet ended by its blank line
        self._decoder = SSEDecoder()  # events that are not one data line
        self._id = False  # an event id was seen: it holds for (and is re-sent with) what follows

    def feed(self, data: bytes) -> list[bytes | ServerSentEvent]:
        buffer = self._rest + data if self._rest else data
        if b"\r" in buffer:  # CRLF or CR line ends: to LF (a last CR may start a CRLF: kept)
            cr = buffer.endswith(b"\r")
            buffer = (buffer[:-1] if cr else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buffer += b"\r" if cr else b""
        blocks = buffer.split(b"\n\n")
        self._rest = blocks.pop()
        if len(self._rest) > self.limit:
            raise event_too_large(self.limit)
        if not blocks:
            return []
        try:  # one check of every whole event (a block never ends inside a character)
            buffer[: len(buffer) - len(self._rest)].decode("utf-8")
        except UnicodeDecodeError as error:
            # The events whole before the bad byte go out first, however the reads were cut; the
            # bad one stays in ``_rest``, to fail the next feed (or close).
            cut = buffer.rfind(b"\n\n", 0, error.start)
            if cut < 0:
                raise invalid_utf8("a stream") from None
            blocks, self._rest = buffer[:cut].split(b"\n\n"), buffer[cut + 2 :]
        out: list[bytes | ServerSentEvent] = []
        for block in blocks:
            if len(block) > self.limit:
                raise event_too_large(self.limit)
            if not self._id and block.startswith(b"data: ") and b"\n" not in block:
                out.append(block + b"\n\n")
                continue
            for line in [*block.decode("utf-8").split("\n"), ""]:  # the blank line ends it
                sse = self._decoder.decode(line)
                if sse is not None:
                    self._id = self._id or bool(sse.id)
                    out.append(sse)
        return out

    def close(self) -> list[bytes | ServerSentEvent]:
        """The stream ended: the events its last bytes complete (a last CR ends a line); an event
        left unfinished is dropped (it is not one), but must be UTF-8 up to where it was cut."""
        rest, self._rest = self._rest, b""
        out = self.feed(rest[:-1] + b"\n" if rest.endswith(b"\r") else rest)
        rest, self._rest = self._rest, b""
        try:
            lines = rest.decode("utf-8").split("\n")[:-1]
        except UnicodeDecodeError:
            raise invalid_utf8("a stream") from None
        for line in lines:  # the unfinished event's complete lines: a blank one may end an event
            sse = self._decoder.decode(line)
            if sse is not None:
                out.append(sse)
        return out


class _StrictText:
    """What :class:`httpx_sse.EventSource` reads of a response (its headers and text), with the text
    decoded as strict UTF-8 (httpx replaces invalid bytes with U+FFFD)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response, self.headers = response, response.headers

    async def aiter_text(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            async for data in self._response.aiter_bytes():
                text = decoder.decode(data)
                if text:
                    yield text
            decoder.decode(b"", True)  # a stream cut inside a character
        except UnicodeDecodeError:
            raise invalid_utf8("a stream") from None


def upstream_events(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """The events of an upstream ``text/event-stream`` response, each as soon as it is complete
    (a :class:`~._errors.ProxyError` 502 at the first byte that is not UTF-8)."""
    return EventSource(cast(httpx.Response, _StrictText(response))).aiter_sse()


def events_of_body(content: bytes, *, usage: bool) -> list[bytes]:
    """A whole JSON answer to a stream request as the events of a stream (module docs); ``usage``:
    whether the client asked for the usage chunk."""
    try:
        data = json.loads(content)
    except UnicodeDecodeError:
        return [event(invalid_utf8("an answer").body())]
    except (json.JSONDecodeError, RecursionError):
        data = None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(choices, list):
        inner = data.get("error") if isinstance(data, dict) else None
        said = inner.get("message") if isinstance(inner, dict) else None
        error = ProxyError(
            "the upstream answered the stream request with a body that is not a completion"
            + (f": {str(said)[:500]}" if said else ""),
            status=502,
            type="upstream_error",
            code="upstream_not_a_stream",
        )
        return [event(error.body())]
    chat = data.get("object") == "chat.completion" or any(
        isinstance(c, dict) and "message" in c for c in choices
    )
    envelope = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
    envelope["object"] = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if chat:
            delta = dict(choice.get("message") or {})
            calls = delta.get("tool_calls")
            if isinstance(calls, list):  # a chunk's tool calls carry their index
                delta["tool_calls"] = [
                    {"index": i, **c} if isinstance(c, dict) else c for i, c in enumerate(calls)
                ]
            chunk = {k: v for k, v in choice.items() if k != "message"}
            chunk["delta"] = delta
        else:
            chunk = dict(choice)
        events.append(event({**envelope, "choices": [chunk]}))
    if usage and isinstance(data.get("usage"), dict):
        events.append(event({**envelope, "choices": [], "usage": data["usage"]}))
    events.append(DONE)
    return events


def is_done(sse: ServerSentEvent) -> bool:
    """Whether ``sse`` is OpenAI's end marker ``[DONE]``."""
    return sse.data.strip() == "[DONE]"


def loads(data: bytes | str) -> Any:
    """An event's data as JSON (None when it is not JSON)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


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
