"""The pass-through's lean relay (issue 17, part 8): the byte-level SSE splitter against the parsing
reader it replaces, the bound on one upstream event, the lazily counted billing tally, and the
upstream transport (keep-alive, aborts, framing, errors) against loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynasor_client import Capabilities
from dynasor_client.endpoints import chunk_tokens
from dynasor_client.proxy import ProxyConfig, ProxyServer, _sse
from dynasor_client.proxy._errors import ProxyError
from dynasor_client.proxy._passthrough import _Tally
from dynasor_client.proxy._pool import UpstreamTransport, direct

# ------------------------------------------------------------------------------ the splitter


def _reference(parts: list[bytes]) -> list[bytes]:
    """What the parsing reader (httpx-sse, re-framed) forwards of ``parts``."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def read() -> list[bytes]:
        response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())
        return [_sse.frame(e) async for e in _sse.upstream_events(response)]

    return asyncio.run(read())


def _split(parts: list[bytes], limit: int = _sse.MAX_EVENT_BYTES) -> list[bytes]:
    splitter = _sse.EventSplitter(limit)
    out = [e for part in parts for e in splitter.feed(part)] + splitter.close()
    return [e if isinstance(e, bytes) else _sse.frame(e) for e in out]


def test_the_splitter_forwards_what_the_parsing_reader_forwards() -> None:
    pieces = [
        b'data: {"x": 1}\n\n', b"data: [DONE]\n\n", b": keep-alive\n\n", b"event: e\n", b"id: 3\n",
        b"retry: 5\n", b"data: a\n", b"\n", b"\r\n", b"\r", b"data:b\r\n\r\n", b"data: \xc3\xa9t\xc3\xa9\n\n",
        b"\n\n\n", b'data: {"usage": null}\n\n',
    ]  # fmt: skip
    rng = random.Random(17)
    plain = 0
    for _ in range(2000):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
        parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        expected = _reference(parts)
        assert _split(parts) == expected, parts
        plain += sum(1 for e in expected if e.startswith(b"data: ") and e.count(b"\n") == 2)
    assert plain > 1000  # the undecoded path was exercised, not only the parsing one


def test_plain_events_are_forwarded_as_the_upstreams_own_bytes() -> None:
    splitter = _sse.EventSplitter()
    events = splitter.feed(b'data: {"a": 1}\n\ndata: {"b"') + splitter.feed(b": 2}\n\ndata: [DONE]\n\n")
    assert events == [b'data: {"a": 1}\n\n', b'data: {"b": 2}\n\n', _sse.DONE]


def test_the_splitter_refuses_invalid_utf8_and_an_endless_event() -> None:
    with pytest.raises(ProxyError) as caught:
        _split([b"data: \xff\n\n"])
    assert caught.value.code == "upstream_invalid_utf8" and caught.value.status == 502
    with pytest.raises(ProxyError) as caught:
        _split([b"data: ok\n\ndata: \xc3"])  # cut inside a character
    assert caught.value.code == "upstream_invalid_utf8"
    # The events whole before a bad byte go out, however the reads were cut; the error comes next.
    for parts in ([b"data: a\n\ndata: b\n\ndata: \xff\n\n"], [b"data: a\n\n", b"data: b\n\ndata: \xff"]):
        splitter = _sse.EventSplitter()
        assert [e for part in parts for e in splitter.feed(part)] == [b"data: a\n\n", b"data: b\n\n"]
        with pytest.raises(ProxyError) as caught:
            splitter.close()
        assert caught.value.code == "upstream_invalid_utf8"
    splitter = _sse.EventSplitter(1000)
    assert splitter.feed(b"data: " + b"x" * 900) == []
    with pytest.raises(ProxyError) as caught:
        splitter.feed(b"x" * 200)  # the same event passes 1,000 bytes without its blank line
    assert caught.value.code == "upstream_event_too_large" and caught.value.status == 502
    with pytest.raises(ProxyError):
        _split([b"data: " + b"y" * 2000 + b"\n\n"], limit=1000)  # one whole event, too long


# ------------------------------------------------------------------------------ billing tally


def _chunk(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
        **extra,
    }


def test_the_tally_counts_what_chunk_tokens_counts_once_it_is_asked() -> None:
    rng = random.Random(3)
    chunks = [_chunk("w" * rng.randint(0, 30)) for _ in range(5000)] + [{"choices": []}, {"error": "x"}]
    tally = _Tally()
    for chunk in chunks:
        tally.add(json.dumps(chunk).encode())
        assert tally.size <= _Tally.HOLD  # a long stream holds at most HOLD bytes unparsed
    tally.add(b"not json")
    assert tally.settle() == sum(chunk_tokens(c) for c in chunks)
    assert tally.content_events == 5000 and tally.held == []


# ------------------------------------------------------------------------------ loopback upstreams

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Upstream:
    """A loopback HTTP/1.1 server whose connections run ``handler`` (raw bytes)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()  # a connection's peer went away
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> _Upstream:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.closed.set()
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _endless(first: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_SSE_HEAD + (_chunked(first) if first else b""))
        while True:  # one event that never ends, until the proxy hangs up
            writer.write(_chunked(b"data: " + b"z" * 65536))
            await writer.drain()

    return handler


@pytest.mark.parametrize("first", [b"", b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'])
async def test_an_endless_upstream_event_is_a_502_and_aborts_the_upstream(first: bytes) -> None:
    async with (
        _Upstream(_endless(first)) as upstream,
        ProxyServer(ProxyConfig(upstream=upstream.url, capabilities=Capabilities())) as proxy,
        httpx.AsyncClient(base_url=proxy.base_url + "/", timeout=60) as client,
    ):
        body = {"model": "m", "prompt": "hi", "stream": True}
        async with client.stream("POST", "completions", json=body) as response:
            content = await response.aread()
        if first:  # the stream had started: an error event ends it, without [DONE]
            assert response.status_code == 200 and content.startswith(first)
            error = json.loads(content[len(first) :].removeprefix(b"data: "))["error"]
            assert b"[DONE]" not in content
        else:
            assert response.status_code == 502
            error = response.json()["error"]
        assert error["code"] == "upstream_event_too_large" and str(_sse.MAX_EVENT_BYTES) in error["message"]
        await asyncio.wait_for(upstream.closed.wait(), 30)  # the upstream saw the proxy hang up


# ------------------------------------------------------------------------------ the transport


def _answers(*responses: bytes, then_close: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await _read_request(reader)
            writer.write(response)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client hangs up

    return handler


async def test_connections_are_kept_alive_and_reused() -> None:
    sse = _SSE_HEAD + _chunked(b"data: 1\n\n") + _chunked(b"data: 2\n\n") + b"0\r\n\r\n"
    fixed = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
    async with (
        _Upstream(_answers(sse, fixed, sse)) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/") as client,
    ):
        async with client.stream("POST", "completions", content=b"{}") as response:
            assert b"".join([p async for p in response.aiter_bytes()]) == b"data: 1\n\ndata: 2\n\n"
        assert (await client.get("models")).json() == {}
        async with client.stream("POST", "completions", content=b"{}") as response:
            assert await response.aread() == b"data: 1\n\ndata: 2\n\n"
    assert upstream.connections == 1


async def test_a_response_closed_early_closes_its_connection() -> None:
    async with (
        _Upstream(_endless(b"")) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/") as client,
    ):
        async with client.stream("POST", "completions", content=b"{}") as response:
            async for _ in response.aiter_bytes():
                break
        await asyncio.wait_for(upstream.closed.wait(), 30)
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        upstream.handler = _answers(answer)
        assert (await client.get("models")).content == b"{}"
    assert upstream.connections == 2  # a new connection: the aborted one was not reused


async def test_a_body_that_ends_with_the_connection() -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nall of it"
    async with (
        _Upstream(_answers(answer, then_close=True)) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/") as client,
    ):
        assert (await client.get("models")).content == b"all of it"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError),
        (b"", httpx.RemoteProtocolError),  # closed before any answer
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
    ],
)
async def test_broken_answers_are_httpx_errors(answer: bytes, error: type[Exception]) -> None:
    async with (
        _Upstream(_answers(answer, then_close=True)) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/") as client,
    ):
        with pytest.raises(error):
            await client.get("models")


async def test_unreachable_and_silent_upstreams() -> None:
    async with _Upstream(_answers()) as upstream:
        url = upstream.url
    async with httpx.AsyncClient(transport=UpstreamTransport(), base_url=url + "/") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("models")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with (
        _Upstream(silent) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/", timeout=0.3) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("models")


async def test_the_direct_path_sends_what_the_client_would() -> None:
    seen: list[bytes] = []
    fixed = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await _read_request(reader))
            writer.write(fixed)
            await writer.drain()

    headers = {"content-type": "application/json", "authorization": "Bearer sk-up", "User-Agent": "me"}
    async with _Upstream(record) as upstream:
        transport = UpstreamTransport()
        async with httpx.AsyncClient(transport=transport, base_url=upstream.url + "/") as client:
            path = direct(client, transport)
            assert path is not None
            response = await client.post("completions", content=b'{"a": 1}', headers=headers)
            assert response.content == b"{}"
            answer = await path.post("completions", headers, b'{"a": 1}')
            assert (answer.status_code, answer.headers["content-type"], await answer.aread()) == (
                200,
                "application/json",
                b"{}",
            )
    assert upstream.connections == 1  # the direct request reused the client's connection

    def fields(request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
        head, _, body = request.partition(b"\r\n\r\n")
        line, *rest = head.split(b"\r\n")
        pairs = (item.split(b": ", 1) for item in rest)
        return line, {name.lower(): value for name, value in pairs}, body

    via_client, via_direct = fields(seen[0]), fields(seen[1])
    assert via_direct[0] == via_client[0] == b"POST /v1/completions HTTP/1.1"
    assert via_direct[2] == via_client[2] == b'{"a": 1}'
    assert via_client[1].pop(b"accept-encoding")  # the direct path asks for the answer unencoded
    assert via_direct[1] == via_client[1] and via_direct[1][b"user-agent"] == b"me"


def test_the_direct_path_is_not_taken_where_httpx_must_send(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = UpstreamTransport()
    plain = httpx.AsyncClient(transport=transport, base_url="http://up:1/v1/")
    assert direct(plain, httpx.AsyncHTTPTransport()) is None  # another transport
    assert direct(plain, transport) is not None
    auth = httpx.AsyncClient(transport=transport, base_url="http://user:pw@up:1/v1/")
    assert direct(auth, transport) is None  # basic auth from the URL
    monkeypatch.setenv("HTTP_PROXY", "http://corporate:3128")
    assert direct(plain, transport) is None
    monkeypatch.setenv("NO_PROXY", "up")
    assert direct(plain, transport) is not None


async def test_a_kept_alive_connection_the_upstream_drops_is_retried_once() -> None:
    fixed = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    async def one_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(fixed)
        await writer.drain()
        await _read_request(reader)  # the next request on this connection: closed unanswered

    async with (
        _Upstream(one_then_drop) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/") as client,
    ):
        for _ in range(3):
            assert (await client.post("completions", content=b"{}")).content == b"{}"
    assert upstream.connections == 3  # each drop cost one new connection, no failed request

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # a new connection closed unanswered: not retried

    async with (
        _Upstream(never) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(), base_url=upstream.url + "/") as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("completions", content=b"{}")
    assert upstream.connections == 1


async def test_idle_connections_expire() -> None:
    fixed = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    async with (
        _Upstream(_answers(fixed, fixed)) as upstream,
        httpx.AsyncClient(transport=UpstreamTransport(expiry=0.0), base_url=upstream.url + "/") as client,
    ):
        await client.get("models")
        await client.get("models")
    assert upstream.connections == 2


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_https_upstreams(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    fixed = b'HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{"a":1}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                await _read_request(reader)
                writer.write(fixed)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    try:
        trusted = UpstreamTransport(tls=ssl.create_default_context(cafile=str(cert)))
        async with httpx.AsyncClient(transport=trusted, base_url=f"https://127.0.0.1:{port}/v1/") as client:
            path = direct(client, trusted)
            assert path is not None
            assert (await client.get("models")).json() == {"a": 1}
            assert await (await path.post("completions", {}, b"{}")).aread() == b'{"a":1}'
        untrusted = UpstreamTransport()  # the default verification: a self-signed certificate fails
        async with httpx.AsyncClient(transport=untrusted, base_url=f"https://127.0.0.1:{port}/v1/") as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("models")
    finally:
        server.close()
