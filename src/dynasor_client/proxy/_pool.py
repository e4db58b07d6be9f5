"""The proxy's upstream connections: a lean HTTP/1.1 transport for its ``httpx`` client.

The pass-through path relays every upstream stream, so what reading a stream costs per event is
the proxy's throughput (issue 17, part 8; docs/proxy-benchmark.md). ``httpx``'s default transport
(httpcore + h11) wakes half a dozen layers of Python per HTTP chunk, and an OpenAI-compatible
server sends one chunk per event; its pool also re-examines every connection whenever a request
enters or leaves it. :class:`UpstreamTransport` is an :class:`httpx.AsyncBaseTransport` on
asyncio's protocols and ``httptools`` (uvicorn's C parser): a response's body is handed over as
whatever one socket read brought (many events at once), connections are kept alive in a plain
list per host, and a stream the client stops reading pauses the socket (backpressure).

What ``httpx`` sees is unchanged: the same request and response objects, and its own errors
(``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``),
so the proxy's error mapping is the one of :mod:`._errors`. A response closed before its end
closes its connection (the upstream sees the disconnect and stops generating); one read to its end
returns the connection to the pool when the upstream allows keep-alive. Timeouts are ``httpx``'s:
connect, and read (the longest wait for any byte). ``http://`` and ``https://`` (TLS with
``httpx``'s default verification) upstreams; a proxy from the environment is ``httpx``'s own
transport (``httpx`` mounts it before this one).
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httptools
import httpx

__all__ = ["Answer", "Direct", "UpstreamTransport", "direct", "upstream_transport"]

SocketOption = tuple[int, int, int]
Key = tuple[str, str, int]  # scheme, host, port

#: Body bytes a connection buffers for a reader that is not reading before it stops reading the socket.
HIGH_WATER = 256 * 1024


class _Connection(asyncio.Protocol):
    """One upstream HTTP/1.1 connection: one response at a time, parsed by ``httptools``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False  # the connection is gone
        self.busy = False
        self.reused = False  # taken from the idle list (not newly connected) for this request
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._new_response()

    def _new_response(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.paused = False
        self.error: httpx.HTTPError | None = None
        self.received = False  # a byte of this response arrived
        self.until_close = False  # the body ends when the connection does (no length, not chunked)
        self.keep = False  # the upstream allows another request on this connection

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"malformed HTTP answer from the upstream: {exc}")
            self.close()
        if self.size > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.busy and not self.complete and self.error is None:
            if self.head_done and self.until_close:
                self.complete = True
            elif self.head_done:
                self.error = httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            else:
                self.error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
        self._wake()

    # -------------------------------------------------------------- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True
        names = {name.lower() for name, _ in self.headers}
        self.until_close = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and self.status >= 200
            and self.status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep = self.parser.should_keep_alive()  # read now: the parser resets after this

    # -------------------------------------------------------------- for the transport

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, read_s: float | None) -> None:
        """Until the parser has more (or the connection ended); ReadTimeout after ``read_s`` s."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(read_s):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout(f"no byte from the upstream for {read_s:g} s") from None
        finally:
            self._waiter = None

    def take(self) -> bytes:
        chunks, self.chunks, self.size = self.chunks, [], 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def begin(self, data: bytes) -> None:
        self._new_response()
        self.busy = True
        assert self.transport is not None
        self.transport.write(data)

    def reusable(self) -> bool:
        return self.complete and self.keep and not self.lost and self.error is None

    def readable(self) -> bool:
        """Whether the idle connection has bytes or an EOF waiting: the upstream closed it."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return True
        return bool(select.select([sock.fileno()], [], [], 0)[0])

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class Answer(httpx.AsyncByteStream):
    """An upstream response: its status and headers, and its body, each piece what the socket
    delivered since the last one (also the body stream of the ``httpx.Response``)."""

    def __init__(self, pool: UpstreamTransport, key: Key, conn: _Connection, read_s: float | None) -> None:
        self.pool, self.key, self.conn, self.read_s = pool, key, conn, read_s
        self.status_code = conn.status
        self.headers = httpx.Headers(conn.headers)
        self.done = self.closed = False

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, then the response is closed (as ``httpx``'s)."""
        try:
            async for piece in self:
                yield piece
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_bytes()])

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                break
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self.read_s)
        self.done = True

    async def aclose(self) -> None:
        if self.closed:
            return
        conn, self.closed = self.conn, True
        conn.busy = False
        if self.done and conn.reusable():
            self.pool.release(self.key, conn)
        else:
            conn.close()  # unread: the upstream sees the disconnect (an abort)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to the upstream on asyncio protocols (module docs); up to ``keep_alive`` idle
    connections kept per host, each for at most ``expiry`` seconds (``httpx``'s default), and only
    reused when the upstream has not closed it (checked on the socket, as httpcore does)."""

    def __init__(
        self,
        keep_alive: int = 64,
        *,
        expiry: float = 5.0,
        tls: ssl.SSLContext | None = None,
        socket_options: Sequence[SocketOption] = (),
    ) -> None:
        self.keep_alive = keep_alive
        self.expiry = expiry
        self.socket_options = tuple(socket_options)
        self._tls = tls
        self._idle: dict[Key, list[_Connection]] = {}

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the upstream URL's scheme must be http or https: {url}")
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        head = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        chunked = False
        for name, value in request.headers.raw:
            chunked = chunked or (name.lower() == b"transfer-encoding" and b"chunked" in value.lower())
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        if chunked:  # a streamed request body (the pass-through sends bytes: never)
            body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        answer = await self.send(key, b"".join(head) + body, timeouts.get("connect"), timeouts.get("read"))
        version = answer.conn.parser.get_http_version().encode("ascii")
        return httpx.Response(
            answer.status_code,
            headers=answer.headers,
            stream=answer,
            extensions={"http_version": b"HTTP/" + version},
        )

    async def send(self, key: Key, data: bytes, connect_s: float | None, read_s: float | None) -> Answer:
        """Send ``data`` (a whole HTTP/1.1 request) to ``key``'s host; its answer once its head is
        in. A kept-alive connection that the upstream closed before answering a byte (it had timed
        it out as we sent) is retried once on a new connection: the upstream never read it."""
        for fresh in (False, True):
            conn = await self._connection(key, connect_s, fresh=fresh)
            try:
                conn.begin(data)
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(read_s)
            except httpx.RemoteProtocolError:
                conn.close()
                if fresh or not conn.reused or conn.received:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            return Answer(self, key, conn, read_s)
        raise AssertionError("unreachable")

    async def _connection(self, key: Key, connect_s: float | None, *, fresh: bool = False) -> _Connection:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.expiry and not conn.readable():
                conn.reused = True
                return conn
            conn.close()  # expired, or the upstream closed it (its EOF not yet read by the loop)
        scheme, host, port = key
        tls = self._context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {connect_s:g} s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            for option in self.socket_options:
                sock.setsockopt(*option)
        return conn

    def release(self, key: Key, conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        conn.idle_since = time.monotonic()
        if len(idle) < self.keep_alive:
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def upstream_transport(
    max_in_flight: int, *, socket_options: Sequence[SocketOption] = ()
) -> UpstreamTransport:
    """The transport of the proxy's upstream client for ``max_in_flight`` concurrent requests: as
    many idle connections kept as can be in flight (a closed loop of requests reuses them)."""
    return UpstreamTransport(keep_alive=max(16, max_in_flight), socket_options=socket_options)


class Direct:
    """``POST`` requests of ``client`` (whose transport is ``transport``) sent straight through the
    transport: the same bytes on the wire as ``client`` would send, without building its request
    and response objects (~0.2-0.4 ms a request). The client's default headers are sent, but not
    ``accept-encoding``: the answer comes unencoded. :func:`direct` says when this applies."""

    def __init__(self, client: httpx.AsyncClient, transport: UpstreamTransport) -> None:
        base = client.base_url
        port = base.port or (443 if base.scheme == "https" else 80)
        self.transport, self.key = transport, (base.scheme, base.host, port)
        self.prefix = base.raw_path  # ends with "/"
        self.connect_s, self.read_s = client.timeout.connect, client.timeout.read
        host = base.raw_host if base.port is None else base.raw_host + b":%d" % base.port
        self.defaults = {b"host": (b"Host", host)}
        for name, value in client.headers.raw:
            if name.lower() != b"accept-encoding":
                self.defaults[name.lower()] = (name, value)

    async def post(self, path: str, headers: Mapping[str, str], content: bytes) -> Answer:
        fields = dict(self.defaults)
        for name, value in headers.items():
            fields[name.lower().encode("latin-1")] = (name.encode("latin-1"), value.encode("latin-1"))
        fields[b"content-length"] = (b"Content-Length", b"%d" % len(content))
        head = [b"POST ", self.prefix, path.encode("ascii"), b" HTTP/1.1\r\n"]
        for name_b, value_b in fields.values():
            head += [name_b, b": ", value_b, b"\r\n"]
        head += [b"\r\n", content]
        return await self.transport.send(self.key, b"".join(head), self.connect_s, self.read_s)


def direct(client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport) -> Direct | None:
    """The direct path of ``client`` (:class:`Direct`), or None where ``client`` itself must send:
    another transport, credentials in the URL (basic auth), or a proxy from the environment that
    may apply to the upstream (``httpx`` routes through it)."""
    base = client.base_url
    if not isinstance(transport, UpstreamTransport) or base.userinfo or base.scheme not in ("http", "https"):
        return None
    proxies = urllib.request.getproxies_environment()
    proxied = client.trust_env and (base.scheme in proxies or "all" in proxies)
    if proxied and not urllib.request.proxy_bypass(base.host):
        return None
    return Direct(client, transport)
