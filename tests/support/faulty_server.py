"""A real, deliberately misbehaving OpenAI-compatible HTTP/1.1 server for fault-injection tests.

The server runs ``asyncio.start_server`` on its own event loop in a daemon thread, so sync tests and
async tests (whatever their event loop) can talk to it over a genuine loopback socket. The first path
segment names a *scenario* that decides how generation requests are answered::

    with FaultyServer() as srv:
        client = openai.OpenAI(base_url=srv.base_url("status-503-2"), api_key="x")

Scenarios (numbers are parameters; decimals allowed for seconds):

- ``ok``: always the normal, deterministic answer.
- ``status-{code}-{k}``: the first k generation requests get HTTP {code}, later ones ``ok``.
- ``ratelimit-{seconds}-{k}``: the first k get 429 with ``Retry-After: {seconds}``, then ``ok``.
- ``drop-{k}``: the first k are cut mid-response (connection closed early), then ``ok``.
- ``malformed``: 200 with an invalid JSON body, always.
- ``slow-{seconds}``: answers normally after {seconds} (before the first SSE event when streaming).
- ``legacy-logprobs``: completions logprobs in vLLM's legacy shape; chat as ``ok``.
- ``max-n-{m}``: 400 (llama.cpp's message) when ``n`` > m, else ``ok``.
- ``context-too-long``: 400 with vLLM's context-length message, always.
- ``auth``: 401 on ``/v1/*`` unless ``Authorization: Bearer good-key``.
- ``echo-key-{code}``: echoes the ``Authorization`` header it got, as OpenAI's "Incorrect API key
  provided: ..." does: HTTP {code} with that message on ``/v1/*``; with 200, a stream's second event
  is an error carrying it and a non-stream answer's text is it (``/v1/models`` answers normally).
- ``reasoning``: chat answers carry ``reasoning_content``; completions as ``ok``.
- ``judge-{code}``: HTTP {code} for requests with ``max_tokens: 1`` (a yes/no judge's), else ``ok``.
- ``bad-utf8``: 200 answers whose text holds an invalid UTF-8 byte (``0xff``), streamed or not.
- ``json-for-stream``: a stream request is answered with the whole JSON body (not SSE).
- ``endless``: a stream request is answered with an SSE stream that never ends (events of ~8 KiB,
  as fast as the peer reads them); a request without ``stream`` as ``ok``.
- ``huge-error-{mib}``: HTTP 500 with a JSON error body of {mib} MiB (sent 1 MiB at a time).
- ``cut-{m}-{k}``: the first k are answered with ``2m`` tokens (`` w0 w1 ...``, one per event)
  of which the first m are streamed before the connection is dropped (no finish, usage or
  ``[DONE]``; a request without ``stream``: half the body, as ``drop``); then ``ok``-like answers
  of ``2m`` tokens.
- ``stall-{m}``: a stream request is answered with m tokens, then nothing but SSE comments every
  50 ms until the peer leaves (:meth:`FaultyServer.wait_ended`); without ``stream`` as ``ok``.
- ``no-usage``: as ``ok``, but no ``usage`` anywhere (not even with ``include_usage``).

For ``endless`` and ``huge-error-*``, :meth:`FaultyServer.sent_bytes` counts the body bytes handed
to the socket (it stops growing while the peer does not read); for them and ``stall-*``,
:meth:`FaultyServer.wait_ended` waits until such a response ended (finished, or the peer left).

Only generation requests (completions and chat) count towards a scenario's fault budget; ``/health``
and ``/v1/models`` always answer normally (``auth`` aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

__all__ = ["GOOD_API_KEY", "MODEL_ID", "FaultyServer", "RecordedRequest"]

HOST = "127.0.0.1"
MODEL_ID = "faulty-model"
GOOD_API_KEY = "good-key"
# Small pause between SSE events so that clients really see a stream, not one burst.
CHUNK_DELAY_S = 0.005
REASONING_TEXT = "Let me think. 40 + 2."
REASONING_TOKENS = ["Let", " me", " think", ".", " 40", " +", " 2", "."]
CONTEXT_TOO_LONG_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens "
    "(3000 in the messages, 1096 in the completion). Please reduce the length of the messages or completion."
)
# Generous bounds: this server only ever talks to the test-suite.
_HEADER_LIMIT = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_THREAD_TIMEOUT_S = 10.0

_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/completions": ("POST", "completions"),
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/models": ("GET", "models"),
    "/health": ("GET", "health"),
}

_SECONDS = r"(?P<seconds>\d+(?:\.\d+)?)"
_SCENARIOS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ok", re.compile(r"ok")),
    ("status", re.compile(r"status-(?P<code>[45]\d\d)-(?P<k>\d+)")),
    ("ratelimit", re.compile(rf"ratelimit-{_SECONDS}-(?P<k>\d+)")),
    ("drop", re.compile(r"drop-(?P<k>\d+)")),
    ("malformed", re.compile(r"malformed")),
    ("slow", re.compile(rf"slow-{_SECONDS}")),
    ("legacy-logprobs", re.compile(r"legacy-logprobs")),
    ("max-n", re.compile(r"max-n-(?P<max_n>\d+)")),
    ("context-too-long", re.compile(r"context-too-long")),
    ("auth", re.compile(r"auth")),
    ("echo-key", re.compile(r"echo-key-(?P<code>[245]\d\d)")),
    ("reasoning", re.compile(r"reasoning")),
    ("judge", re.compile(r"judge-(?P<code>[45]\d\d)")),
    ("bad-utf8", re.compile(r"bad-utf8")),
    ("json-for-stream", re.compile(r"json-for-stream")),
    ("endless", re.compile(r"endless")),
    ("huge-error", re.compile(r"huge-error-(?P<k>\d+)")),
    ("cut", re.compile(r"cut-(?P<max_n>\d+)-(?P<k>\d+)")),
    ("stall", re.compile(r"stall-(?P<max_n>\d+)")),
    ("no-usage", re.compile(r"no-usage")),
)
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it (every route, every scenario)."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    json: Any | None  # parsed body, or None when empty or not JSON
    received_at: float  # time.monotonic() once the body was read
    scenario: str = ""
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class _Scenario:
    kind: str
    code: int = 0
    k: int = 0
    seconds: float = 0.0
    seconds_text: str = ""  # echoed verbatim in Retry-After
    max_n: int = 0


def _parse_scenario(name: str) -> _Scenario | None:
    for kind, pattern in _SCENARIOS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        groups = match.groupdict()
        seconds_text = groups.get("seconds") or ""
        return _Scenario(
            kind=kind,
            code=int(groups.get("code") or 0),
            k=int(groups.get("k") or 0),
            seconds=float(seconds_text or 0),
            seconds_text=seconds_text,
            max_n=int(groups.get("max_n") or 0),
        )
    return None


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    path: str
    headers: dict[str, str]
    body: bytes


class _BadRequest(Exception):
    """The bytes on the wire are not a request this server understands."""


class _ApiError(Exception):
    """Answer with an OpenAI-style error body (raised from deep inside request handling)."""

    def __init__(self, status: int, payload: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(status, payload)
        self.status = status
        self.payload = payload
        self.headers = list(headers)


def _error_payload(message: str, type_: str, code: int | str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def _invalid(message: str) -> _ApiError:
    return _ApiError(400, _error_payload(message, "invalid_request_error", 400))


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """Read one request; None when the peer left before sending anything."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise _BadRequest("connection closed inside the request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"bad request line {lines[0]!r}")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise _BadRequest(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    # Our clients never send chunked bodies; refusing keeps the parser honest.
    if "transfer-encoding" in headers:
        raise _BadRequest("request Transfer-Encoding is not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise _BadRequest("bad Content-Length") from exc
    if not 0 <= length <= _MAX_BODY:
        raise _BadRequest("bad Content-Length")
    body = await reader.readexactly(length) if length else b""
    return _Request(method=method, target=target, path=target.partition("?")[0], headers=headers, body=body)


class _Responder:
    """Writes one HTTP/1.1 response; always ``Connection: close``."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.started = False

    async def send_head(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", "Server: faulty-server", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        self.started = True
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def send_json(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        body = json.dumps(payload).encode()
        head = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers]
        await self.send_head(status, head)
        await self.send(body)

    async def send_chunk(self, data: bytes) -> None:
        # Chunked framing (not close-delimited) so a dropped stream is detectably incomplete.
        await self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def end_chunks(self) -> None:
        await self.send(b"0\r\n\r\n")


# --- deterministic generation ----------------------------------------------------------------------


@dataclass(slots=True)
class _Choice:
    index: int
    reasoning: list[str]
    content: list[str]
    finish_reason: str
    logprob_entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        return self.reasoning + self.content


def _build_choices(n: int, max_tokens: int | None, reasoning: bool) -> list[_Choice]:
    choices = []
    for i in range(n):
        think = list(REASONING_TOKENS) if reasoning else []
        answer = ["42"] if reasoning else ["answer", f" {i}", ":", " 42"]
        finish = "stop"
        if max_tokens is not None and max_tokens < len(think) + len(answer):
            # Cut the whole token sequence, reasoning first, like a real max_tokens limit.
            answer = answer[: max(0, max_tokens - len(think))]
            think = think[:max_tokens]
            finish = "length"
        choices.append(_Choice(index=i, reasoning=think, content=answer, finish_reason=finish))
    return choices


def _chat_logprob_entries(tokens: list[str], k: int) -> list[dict[str, Any]]:
    """llama.cpp / OpenAI chat shape: one entry per token with k top alternatives (chosen first)."""
    entries = []
    for j, token in enumerate(tokens):
        logprob = -0.1 * (j + 1)
        chosen = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "id": 100 + j}
        top = [dict(chosen)] if k > 0 else []
        for m in range(1, k):
            alt = f"alt{m}"
            top.append({"token": alt, "logprob": logprob - m, "bytes": list(alt.encode()), "id": 1000 + m})
        entries.append({**chosen, "top_logprobs": top})
    return entries


def _legacy_logprobs(entries: list[dict[str, Any]], k: int, offset: int = 0) -> dict[str, Any]:
    """vLLM's legacy completions shape, derived from the chat-shaped entries."""
    text_offset = []
    for entry in entries:
        text_offset.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": (
            [{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry in entries]
            if k > 0
            else None
        ),
        "text_offset": text_offset,
    }


def _count_words(value: Any) -> int:
    """Prompt 'tokens' = whitespace-separated words; token-id prompts count one per id."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):  # a chat content part such as {"type": "text", "text": ...}
        return _count_words(value.get("text"))
    return 0


def _int_field(body: dict[str, Any], name: str, default: int | None, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"Field '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def _logprobs_k(body: dict[str, Any], endpoint: str) -> int | None:
    """How many top alternatives were asked for; None when no logprobs were asked."""
    value = body.get("logprobs")
    if endpoint == "completions":
        if value is None or value is False:
            return None
        if not isinstance(value, int) or value < 0:  # True counts as 1, its int value
            raise _invalid(f"Field 'logprobs' must be an integer >= 0, got {value!r}")
        return int(value)
    if not value:
        return None
    return _int_field(body, "top_logprobs", 0, 0)


def _sse(payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


# --- the server ----------------------------------------------------------------------------------


class FaultyServer:
    """Loopback OpenAI-compatible server whose misbehaviour is chosen per request by URL scenario."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards records and counters (read from the test thread)
        self._records: list[RecordedRequest] = []
        self._counters: dict[str, int] = {}
        self._next_id = 0
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._startup_error: BaseException | None = None
        self._connections: set[asyncio.Task[Any]] = set()  # handler tasks; only touched on the server loop
        self._sent: dict[str, int] = {}  # body bytes sent by `endless` and `huge-error-*`
        self._ended: dict[str, threading.Event] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve from a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("FaultyServer already started")
        ready = threading.Event()
        self._startup_error = None
        thread = threading.Thread(target=self._run, args=(ready,), name="FaultyServer", daemon=True)
        self._thread = thread
        thread.start()
        if not ready.wait(_THREAD_TIMEOUT_S) or self._startup_error is not None:
            error = self._startup_error
            self.stop()
            raise RuntimeError("FaultyServer failed to start") from error
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, stop the loop and join the thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(_THREAD_TIMEOUT_S)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(_THREAD_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("FaultyServer thread did not stop")
        self._thread = self._loop = self._server = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultyServer is not running")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def base_url(self, scenario: str) -> str:
        """The OpenAI ``base_url`` for a scenario, e.g. ``http://127.0.0.1:PORT/ok/v1``."""
        return f"{self.root_url}/{scenario}/v1"

    # -- inspection ---------------------------------------------------------------------------------

    def requests(self, scenario: str | None = None) -> list[RecordedRequest]:
        """Requests received for a scenario (all of them when None), oldest first."""
        with self._lock:
            return [r for r in self._records if scenario is None or r.scenario == scenario]

    def generation_count(self, scenario: str) -> int:
        """Generation requests (completions + chat) seen by a scenario since the last reset()."""
        with self._lock:
            return self._counters.get(scenario, 0)

    def errors(self) -> list[BaseException]:
        """Unexpected exceptions raised while handling requests (answered with 500); should stay empty."""
        with self._lock:
            return list(self._errors)

    def reset(self) -> None:
        """Forget recorded requests, per-scenario counters and errors, so faults fire again."""
        with self._lock:
            self._records.clear()
            self._counters.clear()
            self._errors.clear()
            self._next_id = 0
            self._sent.clear()
            self._ended.clear()

    def sent_bytes(self, scenario: str) -> int:
        """Body bytes the ``endless`` and ``huge-error-*`` scenarios handed to their sockets."""
        with self._lock:
            return self._sent.get(scenario, 0)

    def wait_ended(self, scenario: str, timeout: float) -> bool:
        """Wait until a response of the ``endless`` or ``huge-error-*`` scenario ended (finished or
        its peer closed the connection); False when none did within ``timeout`` seconds."""
        return self._ended_event(scenario).wait(timeout)

    def _ended_event(self, scenario: str) -> threading.Event:
        with self._lock:
            return self._ended.setdefault(scenario, threading.Event())

    async def _flood(self, scenario: str, responder: _Responder, pieces: Iterable[bytes]) -> None:
        """Send ``pieces`` (counted in :meth:`sent_bytes`) until they run out or the peer leaves."""
        try:
            for piece in pieces:
                await responder.send(piece)
                with self._lock:
                    self._sent[scenario] = self._sent.get(scenario, 0) + len(piece)
                await asyncio.sleep(0)  # drain() does not yield while the peer keeps up
        except ConnectionError:
            pass
        finally:
            self._ended_event(scenario).set()

    async def _stall(self, scenario: str, responder: _Responder) -> None:
        """SSE comments (which clients skip) every 50 ms until the peer leaves."""
        try:
            while True:
                await responder.send_chunk(b": stalled\n\n")
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            self._ended_event(scenario).set()

    # -- event-loop side ----------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._on_connection, HOST, 0, limit=_HEADER_LIMIT)
                )
            except Exception as exc:
                self._startup_error = exc
                return
            self._server = server
            self._port = server.sockets[0].getsockname()[1]
            self._loop = loop
            ready.set()
            loop.run_forever()
        finally:
            ready.set()  # never leave start() waiting, even on failure
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        server = self._server
        assert server is not None
        loop = asyncio.get_running_loop()
        # Stop accepting, but let already-accepted connections reach their handler before close():
        # on Python 3.11 a connection that attaches after Server.close() fails and leaks its socket.
        for sock in server.sockets:
            with contextlib.suppress(NotImplementedError):
                loop.remove_reader(sock.fileno())
        current = asyncio.current_task()
        for _ in range(100):
            if all(task is current or task in self._connections for task in asyncio.all_tasks()):
                break
            await asyncio.sleep(0)
        server.close()
        while tasks := [task for task in asyncio.all_tasks() if task is not current]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        responder = _Responder(writer)
        try:
            await self._serve(reader, responder)
        except asyncio.CancelledError:
            pass  # stop() cancels us; ending quietly avoids 3.11's noisy client_connected_cb callback
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up; nothing left to answer
        except Exception as exc:
            with self._lock:
                self._errors.append(exc)
            if not responder.started:
                with contextlib.suppress(ConnectionError):
                    await responder.send_json(500, _error_payload(repr(exc), "server_error", 500))
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, responder: _Responder) -> None:
        try:
            request = await _read_request(reader)
        except _BadRequest as exc:
            await responder.send_json(400, _error_payload(str(exc), "invalid_request_error", 400))
            return
        if request is None:
            return
        try:
            await self._dispatch(request, responder)
        except _ApiError as exc:
            await responder.send_json(exc.status, exc.payload, exc.headers)

    def _record(self, request: _Request, scenario: str) -> Any | None:
        try:
            parsed = json.loads(request.body) if request.body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(
            method=request.method,
            path=request.target,
            headers=dict(request.headers),
            json=parsed,
            received_at=time.monotonic(),
            scenario=scenario,
            body=request.body,
        )
        with self._lock:
            self._records.append(record)
        return parsed

    async def _dispatch(self, request: _Request, responder: _Responder) -> None:
        scenario_name, _, rest = request.path.lstrip("/").partition("/")
        body = self._record(request, scenario_name)
        route = _ROUTES.get("/" + rest)
        if route is None:
            raise _ApiError(404, _error_payload(f"Unknown path {request.path}", "not_found_error", 404))
        scenario = _parse_scenario(scenario_name)
        if scenario is None:
            raise _ApiError(
                404, _error_payload(f"Unknown scenario {scenario_name!r}", "not_found_error", 404)
            )
        method, endpoint = route
        if request.method != method:
            raise _ApiError(
                405,
                _error_payload(f"Method {request.method} not allowed", "invalid_request_error", 405),
                [("Allow", method)],
            )
        authorized = request.headers.get("authorization") == f"Bearer {GOOD_API_KEY}"
        if scenario.kind == "auth" and rest.startswith("v1/") and not authorized:
            message = "Incorrect API key provided."
            raise _ApiError(401, _error_payload(message, "invalid_request_error", "invalid_api_key"))
        echoing = scenario.kind == "echo-key" and rest.startswith("v1/")
        if echoing and await self._echo_key(scenario.code, endpoint, body, request, responder):
            return
        if endpoint == "health":
            await responder.send_json(200, {"status": "ok"})
        elif endpoint == "models":
            model = {"id": MODEL_ID, "object": "model", "owned_by": "tests"}
            await responder.send_json(200, {"object": "list", "data": [model]})
        else:
            await self._generate(scenario, scenario_name, endpoint, body, request, responder)

    @staticmethod
    async def _echo_key(
        code: int, endpoint: str, body: Any, request: _Request, responder: _Responder
    ) -> bool:
        """The ``echo-key-{code}`` scenario; False: answer normally (``/v1/models`` with 200)."""
        echoed = f"Incorrect API key provided: {request.headers.get('authorization', '(none)')}."
        if code != 200:
            raise _ApiError(code, _error_payload(echoed, "invalid_request_error", "invalid_api_key"))
        if endpoint not in ("chat", "completions"):
            return False
        if isinstance(body, dict) and body.get("stream") is True:
            delta = {"content": "Hi"} if endpoint == "chat" else None
            choice = {"index": 0, "finish_reason": None, **({"delta": delta} if delta else {"text": "Hi"})}
            head = [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]
            await responder.send_head(200, head)
            await responder.send_chunk(_sse({"id": "echo", "model": MODEL_ID, "choices": [choice]}))
            error = _error_payload(echoed, "invalid_request_error", "invalid_api_key")
            await responder.send_chunk(_sse(error))
            await responder.end_chunks()
            return True
        if endpoint == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": echoed},
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": echoed, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        await responder.send_json(200, {"id": "echo", "model": MODEL_ID, "choices": [choice], "usage": usage})
        return True

    async def _generate(
        self,
        scenario: _Scenario,
        scenario_name: str,
        endpoint: str,
        body: Any,
        request: _Request,
        responder: _Responder,
    ) -> None:
        with self._lock:
            count = self._counters.get(scenario_name, 0) + 1
            self._counters[scenario_name] = count
            self._next_id += 1
            response_id = f"cmpl-faulty-{self._next_id}"
        in_fault_budget = count <= scenario.k

        # Faults that ignore the body come first: a broken server does not validate input.
        if scenario.kind == "status" and in_fault_budget:
            type_ = "server_error" if scenario.code >= 500 else "invalid_request_error"
            message = f"Injected HTTP {scenario.code} ({count}/{scenario.k})"
            raise _ApiError(scenario.code, _error_payload(message, type_, scenario.code))
        if scenario.kind == "ratelimit" and in_fault_budget:
            message = f"Rate limit reached ({count}/{scenario.k}); retry after {scenario.seconds_text}s"
            raise _ApiError(
                429,
                _error_payload(message, "rate_limit_error", "rate_limit_exceeded"),
                [("Retry-After", scenario.seconds_text)],
            )
        if scenario.kind == "context-too-long":
            raise _ApiError(400, _error_payload(CONTEXT_TOO_LONG_MESSAGE, "BadRequestError", 400))
        if scenario.kind == "huge-error":
            padding = scenario.k * _MIB
            head = b'{"error": {"type": "server_error", "code": 500, "message": "'
            tail = b'"}}'
            length = len(head) + padding + len(tail)
            await responder.send_head(
                500, [("Content-Type", "application/json"), ("Content-Length", str(length))]
            )
            pieces = [head, *(b"x" * _MIB for _ in range(scenario.k)), tail]
            await self._flood(scenario_name, responder, pieces)
            return
        if scenario.kind == "malformed":
            broken = b'{"choices": ['
            head = [("Content-Type", "application/json"), ("Content-Length", str(len(broken)))]
            await responder.send_head(200, head)
            await responder.send(broken)
            return

        if not isinstance(body, dict):
            raise _invalid("Request body must be a JSON object")
        if scenario.kind == "judge" and body.get("max_tokens") == 1:
            raise _ApiError(
                scenario.code,
                _error_payload(
                    f"Injected judge HTTP {scenario.code}", "invalid_request_error", scenario.code
                ),
            )
        n = _int_field(body, "n", 1, 1) or 1
        if scenario.kind == "max-n" and n > scenario.max_n:
            message = f"Field 'n': Value must be between 1 <= value <= {scenario.max_n}, but got {n}"
            raise _ApiError(
                400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}}
            )
        max_tokens = _int_field(body, "max_tokens", None, 0)
        if max_tokens is None and endpoint == "chat":
            max_tokens = _int_field(body, "max_completion_tokens", None, 0)
        k = _logprobs_k(body, endpoint)
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        if endpoint == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise _invalid("Field 'messages' must be a list")
            prompt_tokens = sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))
        else:
            prompt_tokens = _count_words(body.get("prompt"))

        choices = _build_choices(n, max_tokens, reasoning=scenario.kind == "reasoning" and endpoint == "chat")
        if scenario.kind in ("cut", "stall"):  # long answers: m tokens are streamed before the fault
            length = 2 * scenario.max_n if max_tokens is None else min(2 * scenario.max_n, max_tokens)
            choices = [_Choice(c.index, [], [f" w{j}" for j in range(length)], "stop") for c in choices]
        if k is not None:
            for choice in choices:
                choice.logprob_entries = _chat_logprob_entries(choice.tokens, k)
        completion_tokens = sum(len(choice.tokens) for choice in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        legacy = scenario.kind == "legacy-logprobs" and endpoint == "completions"
        model = body.get("model") or MODEL_ID
        drop = scenario.kind in ("drop", "cut") and in_fault_budget
        cut_at = 2 if scenario.kind == "drop" else scenario.max_n  # events streamed before a drop
        if scenario.kind == "no-usage":
            include_usage = False

        if scenario.kind == "endless" and stream:
            await responder.send_head(200, [("Content-Type", "text/event-stream")])  # close-delimited
            text = "x" * 8000
            event = {"id": response_id, "object": "chat.completion.chunk", "model": model}
            chunk = _sse({**event, "choices": [{"index": 0, "delta": {"content": text}}]})
            await self._flood(scenario_name, responder, iter(lambda: chunk, None))
            return
        if scenario.kind == "slow":
            await asyncio.sleep(scenario.seconds)  # asyncio.sleep: other connections keep being served
        if stream and scenario.kind != "json-for-stream":
            events = self._stream_events(
                endpoint, response_id, model, choices, k, legacy, usage, include_usage
            )
            await responder.send_head(
                200,
                [
                    ("Content-Type", "text/event-stream"),
                    ("Cache-Control", "no-cache"),
                    ("Transfer-Encoding", "chunked"),
                ],
            )
            for number, event in enumerate(events):
                if drop and number == cut_at:
                    return  # _on_connection closes the socket: no terminating chunk, no [DONE]
                if scenario.kind == "stall" and number == scenario.max_n:
                    await self._stall(scenario_name, responder)
                    return
                if number:
                    await asyncio.sleep(CHUNK_DELAY_S)
                data = _sse(event)
                if scenario.kind == "bad-utf8" and number == 1:
                    data = data.replace(b'"', b'"\xff', 1)  # an invalid UTF-8 byte inside the JSON
                await responder.send_chunk(data)
            await responder.end_chunks()
            return

        payload = self._full_response(endpoint, response_id, model, choices, k, legacy, usage)
        if scenario.kind == "no-usage":
            payload.pop("usage", None)
        data = json.dumps(payload).encode()
        if scenario.kind == "bad-utf8":
            data = data.replace(b'"content": "', b'"content": "\xff', 1).replace(
                b'"text": "', b'"text": "\xff', 1
            )
        await responder.send_head(
            200, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        # A drop promises the full Content-Length but delivers only half of it.
        await responder.send(data[: len(data) // 2] if drop else data)

    @staticmethod
    def _full_response(
        endpoint: str,
        response_id: str,
        model: str,
        choices: list[_Choice],
        k: int | None,
        legacy: bool,
        usage: dict[str, int],
    ) -> dict[str, Any]:
        out_choices: list[dict[str, Any]] = []
        for choice in choices:
            logprobs: dict[str, Any] | None = None
            if k is not None:
                logprobs = (
                    _legacy_logprobs(choice.logprob_entries, k)
                    if legacy
                    else {"content": choice.logprob_entries}
                )
            if endpoint == "completions":
                item: dict[str, Any] = {"index": choice.index, "text": "".join(choice.tokens)}
            else:
                message: dict[str, Any] = {"role": "assistant"}
                if choice.reasoning:
                    message["reasoning_content"] = "".join(choice.reasoning)
                message["content"] = "".join(choice.content)
                item = {"index": choice.index, "message": message}
            item["logprobs"] = logprobs
            item["finish_reason"] = choice.finish_reason
            out_choices.append(item)
        return {
            "id": response_id,
            "object": "text_completion" if endpoint == "completions" else "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": out_choices,
            "usage": usage,
        }

    @staticmethod
    def _stream_events(
        endpoint: str,
        response_id: str,
        model: str,
        choices: list[_Choice],
        k: int | None,
        legacy: bool,
        usage: dict[str, int],
        include_usage: bool,
    ) -> list[Any]:
        """Every SSE payload of a stream, in order: tokens (choices interleaved), finishes, usage, [DONE]."""
        chat = endpoint == "chat"
        envelope = {
            "id": response_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        events: list[Any] = []
        offsets = [0] * len(choices)
        for j in range(max((len(choice.tokens) for choice in choices), default=0)):
            for choice in choices:
                if j >= len(choice.tokens):
                    continue
                token = choice.tokens[j]
                logprobs: dict[str, Any] | None = None
                if k is not None:
                    entry = choice.logprob_entries[j]
                    logprobs = (
                        _legacy_logprobs([entry], k, offsets[choice.index])
                        if legacy
                        else {"content": [entry]}
                    )
                offsets[choice.index] += len(token)
                if chat:
                    delta: dict[str, Any] = {"role": "assistant"} if j == 0 else {}
                    delta["reasoning_content" if j < len(choice.reasoning) else "content"] = token
                    item: dict[str, Any] = {"index": choice.index, "delta": delta}
                else:
                    item = {"index": choice.index, "text": token}
                item["logprobs"] = logprobs
                item["finish_reason"] = None
                events.append({**envelope, "choices": [item]})
        for choice in choices:
            if chat:
                # A choice cut to zero tokens still has to announce its role somewhere.
                final_delta: dict[str, Any] = {} if choice.tokens else {"role": "assistant"}
                final: dict[str, Any] = {"index": choice.index, "delta": final_delta}
            else:
                final = {"index": choice.index, "text": ""}
            final["logprobs"] = None
            final["finish_reason"] = choice.finish_reason
            events.append({**envelope, "choices": [final]})
        if include_usage:
            events.append({**envelope, "choices": [], "usage": usage})
        events.append("[DONE]")
        return events
