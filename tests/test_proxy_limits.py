"""The proxy's resource limits (docs/proxy.md, "Limits"): request body size, bounded upstream error
bodies, backpressure on streams a client does not read, header-read timeout and header size,
idle keep-alive, and the caps on ``n`` and ``max_tokens``.

Real HTTP on 127.0.0.1, the proxy over the fault-injection server
(:mod:`tests.support.faulty_server`). Clients that misbehave are raw sockets (asyncio streams). No
test sleeps to synchronise: each one waits for an event (a response, an end of file, the upstream's
connection ending) with a generous safety timeout that only a hang would reach.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest

from dynasor_client.proxy import ProxyConfig, ProxyServer
from dynasor_client.proxy._run import Run
from tests.support.faulty_server import FaultyServer

#: Safety timeout of every wait (seconds): only reached when the proxy hangs.
SAFETY_S = 60.0
MIB = 1024 * 1024
#: A generous bound on the bytes that may sit between two processes' reads on loopback: every
#: socket buffer on the path (the upstream's send buffer, the proxy's receive buffer, which Linux
#: may autotune up to net.ipv4.tcp_rmem's maximum, 32 MiB here, the proxy's send buffer, up to
#: tcp_wmem's 4 MiB, and the client's receive buffer) plus the proxy's own buffers (the event queue
#: of `stream_buffer` events of ~8 KiB, one transport buffer). Without backpressure the proxy reads
#: an endless upstream for as long as the stall timeout lets it (hundreds of MiB a second).
IN_FLIGHT_BOUND = 48 * MIB

CHAT = {"model": "faulty-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def faulty(faulty_server: FaultyServer) -> FaultyServer:
    faulty_server.reset()
    return faulty_server


def _error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


async def _connect(proxy: ProxyServer, *, rcvbuf: int | None = None) -> tuple[Any, Any]:
    """A raw connection to the proxy (its receive buffer fixed at ``rcvbuf`` bytes when given)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    return await asyncio.open_connection(sock=sock)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-cased), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SAFETY_S)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), SAFETY_S)
    return status, headers, body


async def _until_eof(reader: asyncio.StreamReader) -> int:
    """Read until the proxy closes the connection; the bytes read."""
    total = 0
    while chunk := await asyncio.wait_for(reader.read(MIB), SAFETY_S):
        total += len(chunk)
    return total


def _post_head(length: int | None, path: str = "/v1/chat/completions") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    head = f"POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    return head.encode()


# ------------------------------------------------------------------------------------- request body


async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(faulty: FaultyServer) -> None:
    async with ProxyServer(ProxyConfig(upstream=faulty.base_url("ok"))) as proxy:
        assert proxy.config.max_body_bytes == 16 * MIB  # the documented default
        reader, writer = await _connect(proxy)
        # 200 MB announced, 10 bytes sent: the answer cannot wait for the rest.
        writer.write(_post_head(200_000_000) + b'{"model":')
        status, headers, body = await _read_response(reader)
        assert status == 413 and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["code"] == "request_too_large" and str(16 * MIB) in error["message"]
        assert await _until_eof(reader) == 0  # the connection is closed, the rest never read
        writer.close()
        assert faulty.requests() == []


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(faulty: FaultyServer) -> None:
    limit = 64 * 1024
    config = ProxyConfig(upstream=faulty.base_url("ok"), max_body_bytes=limit)
    async with ProxyServer(config) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(_post_head(None))
        for _ in range(5):  # 80 KiB in 16 KiB chunks, and the body never ends (no last chunk)
            writer.write(b"4000\r\n" + b" " * 0x4000 + b"\r\n")
        await writer.drain()
        status, _, body = await _read_response(reader)
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
        writer.close()

        async with httpx.AsyncClient() as http:  # at the limit: accepted
            content = json.dumps(CHAT).encode()
            padded = content[:-1] + b" " * (limit - len(content)) + b"}"
            answer = await http.post(f"{proxy.base_url}/chat/completions", content=padded)
            assert len(padded) == limit and answer.status_code == 200
            too_big = await http.post(f"{proxy.base_url}/chat/completions", content=padded + b" ")
            _error(too_big, 413)


async def test_a_body_that_stops_coming_is_408(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), header_timeout_s=0.5)
    async with ProxyServer(config) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(_post_head(100) + b'{"model":')  # 9 of 100 bytes, then nothing
        status, headers, body = await _read_response(reader)
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert await _eof(reader)
        writer.close()


# ------------------------------------------------------------------------------ upstream error body


async def test_a_huge_upstream_error_body_is_not_read_whole(faulty: FaultyServer) -> None:
    async with (
        ProxyServer(ProxyConfig(upstream=faulty.base_url("huge-error-100"))) as proxy,
        httpx.AsyncClient(timeout=SAFETY_S) as http,
    ):
        assert proxy.config.max_error_body_bytes == 64 * 1024
        for stream in (False, True):
            faulty.reset()
            answer = await http.post(f"{proxy.base_url}/chat/completions", json={**CHAT, "stream": stream})
            error = _error(answer, 500)
            assert len(error["message"]) <= 1000
            # The proxy closed the upstream connection after 64 KiB: the upstream's writes fail.
            assert await asyncio.to_thread(faulty.wait_ended, "huge-error-100", SAFETY_S)
            assert faulty.sent_bytes("huge-error-100") < IN_FLIGHT_BOUND  # of 100 MiB
        assert (await http.get(f"{proxy.root_url}/health")).status_code == 200


# -------------------------------------------------------------------------------------- backpressure


async def test_a_client_that_does_not_read_stalls_the_upstream_then_is_aborted(
    faulty: FaultyServer,
) -> None:
    config = ProxyConfig(upstream=faulty.base_url("endless"), stall_timeout_s=1.0, stream_buffer=16)
    async with ProxyServer(config) as proxy:
        runs: list[Run] = []
        track = proxy.service.track
        proxy.service.track = lambda run: (runs.append(run), track(run))[1]  # type: ignore[method-assign]
        reader, writer = await _connect(proxy, rcvbuf=64 * 1024)
        body = json.dumps({**CHAT, "stream": True}).encode()
        writer.write(_post_head(len(body)) + body)
        await writer.drain()
        # The client reads nothing. The proxy stops reading the endless upstream once its queue
        # and the socket buffers are full, and gives up after the stall timeout: the upstream
        # connection ends (it would never end otherwise).
        assert await asyncio.to_thread(faulty.wait_ended, "endless", SAFETY_S)
        sent = faulty.sent_bytes("endless")
        assert 0 < sent < IN_FLIGHT_BOUND
        # Structurally: the proxy never held more than its buffer of events (and the end marker).
        (run,) = runs
        assert run.events.most <= config.stream_buffer + 1
        # The client's connection was closed too: what it can still read is finite and small.
        received = await _until_eof(reader)
        assert 0 < received < IN_FLIGHT_BOUND
        writer.close()
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{proxy.root_url}/health")).status_code == 200


async def test_a_reading_client_gets_the_stream_through_a_small_buffer(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), stream_buffer=1)
    async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=SAFETY_S) as http:
        body = {"model": "faulty-model", "prompt": "hi", "stream": True, "n": 3}
        async with http.stream("POST", f"{proxy.base_url}/completions", json=body) as answer:
            text = (await answer.aread()).decode()
        assert answer.status_code == 200 and text.endswith("data: [DONE]\n\n")
        assert text.count("data: ") > 10


# ------------------------------------------------------------------------------------ connections


async def test_half_open_connections_are_closed_after_the_header_timeout(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), header_timeout_s=0.5)
    async with ProxyServer(config) as proxy:
        assert ProxyConfig(upstream="http://x/v1").header_timeout_s == 10.0  # the default
        connections = [await _connect(proxy) for _ in range(1200)]  # as many as the issue held
        for i, (_, writer) in enumerate(connections):
            if i % 2:  # half send part of a request's headers, half nothing at all
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\n")
        # Each one is closed by the proxy (end of file), none answered.
        assert all(await asyncio.gather(*(_eof(reader) for reader, _ in connections)))
        for _, writer in connections:
            writer.close()
        async with httpx.AsyncClient() as http:  # a well-behaved client is served meanwhile
            answer = await http.post(f"{proxy.base_url}/chat/completions", json=CHAT)
            assert answer.status_code == 200


async def _eof(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), SAFETY_S) == b""


async def test_a_kept_alive_connection_has_the_header_timeout_again(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), header_timeout_s=0.5, keep_alive_s=30.0)
    async with ProxyServer(config) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(b"GET /health HTTP/1.1\r\nhost: proxy\r\n\r\n")
        status, _, _ = await _read_response(reader)
        assert status == 200
        writer.write(b"GET /health HTTP/1.1\r\nhost: pro")  # the next request's headers never end
        assert await _eof(reader)
        writer.close()


async def test_idle_keep_alive_connections_are_closed(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), keep_alive_s=0.5, header_timeout_s=30.0)
    async with ProxyServer(config) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(b"GET /health HTTP/1.1\r\nhost: proxy\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
        assert await _eof(reader)
        writer.close()


async def test_headers_over_the_limit_are_431(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), max_header_bytes=8 * 1024)
    async with ProxyServer(config) as proxy:
        reader, writer = await _connect(proxy)
        # 9 KiB of headers that never end, in one write (the proxy closes the connection once they
        # pass the limit: bytes it has not read would turn its close into a reset).
        filler = "".join(f"x-filler-{i}: {'a' * 1000}\r\n" for i in range(9))
        writer.write(b"GET /health HTTP/1.1\r\nhost: proxy\r\n" + filler.encode())
        await writer.drain()
        status, headers, body = await _read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "headers_too_large"
        assert await _eof(reader)
        writer.close()
        async with httpx.AsyncClient() as http:  # ordinary headers pass
            answer = await http.get(f"{proxy.root_url}/health", headers={"x-big": "a" * 4000})
            assert answer.status_code == 200


async def test_connections_beyond_the_limit_get_503(faulty: FaultyServer) -> None:
    config = ProxyConfig(upstream=faulty.base_url("ok"), max_connections=3)
    async with ProxyServer(config) as proxy:
        idle = [await _connect(proxy) for _ in range(3)]
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{proxy.root_url}/health")
            assert answer.status_code == 503  # uvicorn's own answer (plain text)
        for _, writer in idle:
            writer.close()


# ----------------------------------------------------------------------------------- n, max_tokens


async def test_n_and_max_tokens_are_capped(faulty: FaultyServer) -> None:
    async with (
        ProxyServer(ProxyConfig(upstream=faulty.base_url("ok"), max_in_flight=64)) as proxy,
        httpx.AsyncClient(timeout=SAFETY_S) as http,
    ):
        url = f"{proxy.base_url}/chat/completions"
        for n in (1024, 64, 17):
            error = _error(await http.post(url, json={**CHAT, "n": n}), 400)
            assert error["param"] == "n" and error["code"] == "n_too_large" and "16" in error["message"]
        assert (await http.post(url, json={**CHAT, "n": 16})).status_code == 200
        for name in ("max_tokens", "max_completion_tokens"):
            error = _error(await http.post(url, json={**CHAT, name: 10**6}), 400)
            assert error["param"] == name and error["code"] == "max_tokens_too_large"
            assert (await http.post(url, json={**CHAT, name: 65536})).status_code == 200
        # A dynasor request's max_tokens too.
        sc = {**CHAT, "max_tokens": 10**6, "dynasor": {"algorithm": "sc", "n": 2}}
        assert _error(await http.post(url, json=sc), 400)["param"] == "max_tokens"
        seen = [r.json for r in faulty.requests("ok") if r.json is not None]
        assert all(r.get("n", 1) <= 16 and r.get("max_tokens", 0) <= 65536 for r in seen)

    # The window caps n too, and the limits follow the configuration.
    config = ProxyConfig(upstream=faulty.base_url("ok"), max_in_flight=4, max_n=100, max_tokens=None)
    async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=SAFETY_S) as http:
        url = f"{proxy.base_url}/completions"
        body = {"model": "faulty-model", "prompt": "hi"}
        assert "at most 4" in _error(await http.post(url, json={**body, "n": 5}), 400)["message"]
        assert (await http.post(url, json={**body, "n": 4, "max_tokens": 10**6})).status_code == 200


async def test_a_techniques_samples_and_steps_are_capped(faulty: FaultyServer) -> None:
    """dynasor.n (sc, bon) and dynasor.width (rebase) against --max-samples, a technique's chunk and
    step sizes against --max-tokens: 400 before anything is sent upstream."""
    config = ProxyConfig(upstream=faulty.base_url("ok"), max_samples=8, max_tokens=512)
    too_large = "max_tokens_too_large"
    async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=SAFETY_S) as http:
        url = f"{proxy.base_url}/chat/completions"
        refused = [
            ({"model": "faulty-model+sc9"}, "dynasor.n", "too_many_samples"),
            ({"dynasor": {"algorithm": "best_of_n", "n": 256}}, "dynasor.n", "too_many_samples"),
            ({"dynasor": {"algorithm": "rebase", "width": 9}}, "dynasor.width", "too_many_samples"),
            ({"dynasor": {"algorithm": "cot", "chunk_tokens": 513}}, "dynasor.chunk_tokens", too_large),
            ({"dynasor": {"algorithm": "mcts", "step_tokens": 4096}}, "dynasor.step_tokens", too_large),
        ]  # fmt: skip
        for extra, param, code in refused:
            error = _error(await http.post(url, json={**CHAT, **extra}), 400)
            assert (error["param"], error["code"]) == (param, code), error
            assert "on this proxy" in error["message"]
        assert faulty.generation_count("ok") == 0  # refused before anything went upstream
        answer = await http.post(url, json={**CHAT, "model": "faulty-model+sc8"})  # at the limit
        assert answer.status_code == 200 and answer.json()["dynasor"]["max_samples"] == 8
        assert proxy.service.counters.refused == len(refused)
    # The default: 64 samples, whatever the option's own range (256).
    assert ProxyConfig(upstream="http://x/v1").max_samples == 64


def test_limits_are_validated() -> None:
    for field, value in (
        ("max_body_bytes", 0),
        ("max_n", 0),
        ("max_samples", 0),
        ("stream_buffer", 0),
        ("max_tokens", 0),
        ("stall_timeout_s", 0.0),
        ("header_timeout_s", float("nan")),
        ("keep_alive_s", float("inf")),
    ):
        with pytest.raises(ValueError, match=field):
            ProxyConfig(upstream="http://127.0.0.1:1/v1", **{field: value})


def test_cli_flags_set_the_limits() -> None:
    from dynasor_client.cli import build_parser
    from dynasor_client.cli._proxy import build_config

    args = build_parser().parse_args(
        [
            "proxy", "--upstream", "http://127.0.0.1:1/v1", "--max-body-bytes", "1000",
            "--max-error-body-bytes", "2000", "--max-n", "3", "--max-tokens", "none",
            "--stream-buffer", "5", "--stall-timeout", "6", "--header-timeout", "7",
            "--max-header-bytes", "8000", "--max-connections", "none", "--keep-alive", "9",
            "--max-samples", "12",
        ]
    )  # fmt: skip
    config = build_config(args)
    assert (config.max_body_bytes, config.max_error_body_bytes, config.max_n) == (1000, 2000, 3)
    assert (config.max_tokens, config.stream_buffer, config.stall_timeout_s) == (None, 5, 6.0)
    assert (config.header_timeout_s, config.max_header_bytes) == (7.0, 8000)
    assert (config.max_connections, config.keep_alive_s, config.max_samples) == (None, 9.0, 12)
    defaults = build_config(build_parser().parse_args(["proxy", "--upstream", "http://127.0.0.1:1/v1"]))
    assert defaults.max_tokens == ProxyConfig(upstream="http://x/v1").max_tokens == 65536
    assert defaults.max_connections == 1024 and defaults.stall_timeout_s == 60.0
    assert defaults.max_samples == 64
