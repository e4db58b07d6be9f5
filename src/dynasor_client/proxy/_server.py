"""Running the proxy: :class:`ProxyServer` in this event loop (tests, notebooks); :func:`serve_proxy`."""

from __future__ import annotations

import asyncio
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
            lifespan="on",
        )  # fmt: skip

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()


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
