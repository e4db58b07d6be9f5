"""Running the proxy: :class:`ProxyServer` in this event loop (tests, notebooks); :func:`serve_proxy`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .._serving import HTTPFront, InProcessServer
from ..endpoints import RetryPolicy
from ._app import create_proxy_app
from ._config import ProxyConfig
from ._service import ProxyService


class ProxyServer(HTTPFront):
    """The proxy on a free port of ``host``, in this process's event loop.

    ``async with ProxyServer(ProxyConfig(upstream=url)) as proxy:`` then point any OpenAI client at
    ``proxy.base_url``. Leaving the block stops accepting requests, cancels the running ones and
    closes the upstream connections.
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        retry: RetryPolicy | None = None,
        log_level: str = "warning",
        access_log: bool = False,
    ) -> None:
        self.config = config
        self.app = create_proxy_app(config, retry=retry)
        self.service: ProxyService = self.app.state.service
        self.host = host
        self._http = InProcessServer(
            self.app, host=host, port=port, name="proxy", log_level=log_level, access_log=access_log,
            lifespan="on", options=uvicorn_options(config),
        )  # fmt: skip

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()


def uvicorn_options(config: ProxyConfig) -> dict[str, Any]:
    """The uvicorn settings of the proxy's connection limits (docs/proxy.md, "Limits"): the
    header-read timeout and header size limit (:func:`guarded_protocol`), the idle keep-alive
    timeout and uvicorn's ``limit_concurrency``."""
    return {
        "http": guarded_protocol(config.header_timeout_s, config.max_header_bytes),
        "timeout_keep_alive": config.keep_alive_s,
        "limit_concurrency": config.max_connections,
        "h11_max_incomplete_event_size": config.max_header_bytes,
    }


_TOO_LARGE = json.dumps(
    {
        "error": {
            "message": "the request line and headers are too large for this proxy",
            "type": "invalid_request_error",
            "param": None,
            "code": "headers_too_large",
        }
    }
).encode()
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n\r\n" + _TOO_LARGE
)


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools', else h11's) with a header-read timeout: a connection
    that has not sent a request's complete headers ``header_timeout_s`` after connecting (or after
    its previous response) is closed, and one whose unfinished headers pass ``max_header_bytes`` gets
    431 and is closed. uvicorn itself waits for headers for ever (it times out idle keep-alive
    connections only), so half-open connections would pile up."""
    base: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools is part of the proxy extra
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class GuardedProtocol(base):  # type: ignore[misc]
        _timer: asyncio.TimerHandle | None = None
        _waiting_since: Any = None  # the request cycle that was current when the timer was armed
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._timer is None:
                return
            if self.cycle is not self._waiting_since:  # the headers are complete
                self._disarm()
                return
            self._head_bytes += len(data)
            if self._head_bytes > max_header_bytes and not self.transport.is_closing():
                self._disarm()
                self.transport.write(_431)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_since, self._head_bytes = self.cycle, 0
            self._timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if self.cycle is self._waiting_since and not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def serve_proxy(
    config: ProxyConfig, *, host: str = "127.0.0.1", port: int | None = None, **options: Any
) -> None:
    """Run the proxy until interrupted (``dynasor-client proxy``)."""

    async def main() -> None:
        server = ProxyServer(config, host=host, port=port, **options)
        async with server:
            keys = f"{len(config.keys)} API keys" if config.keys is not None else "no API keys required"
            print(
                f"dynasor proxy at {server.base_url} -> {config.upstream_display} ({keys}); Ctrl-C stops",
                flush=True,
            )
            await server._http.serve_until_interrupted()

    asyncio.run(main())
