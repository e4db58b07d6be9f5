"""Serving an ASGI application on loopback inside this process's event loop (replay server, proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Any, Self


def bind_socket(host: str, port: int | None) -> socket.socket:
    """A listening, non-blocking socket on ``host:port`` (port None or 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections, which uvicorn leaves with Nagle on when given a socket:
    # a response's body would wait ~40 ms for the client's delayed ACK of its headers.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port or 0))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class InProcessServer:
    """uvicorn serving ``app`` in a task of the running loop, without its signal handling (the host
    process keeps its own). ``await start()`` returns once it accepts connections."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "server",
        log_level: str = "warning",
        access_log: bool = False,
        lifespan: str = "off",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.app, self.host, self.name = app, host, name
        self._options = dict(options or {})  # more uvicorn.Config settings (the proxy's limits)
        self._port = port
        self._log_level, self._access_log, self._lifespan = log_level, access_log, lifespan
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"the {self.name} is not running")
        return self._port

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        if self._task is not None:
            raise RuntimeError(f"this {self.name} was already started")
        sock = bind_socket(self.host, self._port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            access_log=self._access_log,
            lifespan=self._lifespan,  # type: ignore[arg-type]  # "on" or "off"
            timeout_graceful_shutdown=1,
            log_config=None,  # in-process: the host's logging configuration stays as it is
            backlog=4096,
            **self._options,
        )
        self._server = Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"the {self.name} did not start")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def serve_until_interrupted(self) -> None:
        """Wait until SIGINT/SIGTERM or the server stops by itself (command-line servers)."""
        import signal

        if self._task is None:
            raise RuntimeError(f"the {self.name} is not running")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        waiting = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()


class StartStop:
    """``async with`` over ``start()`` and ``stop()`` (which subclasses define)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class HTTPFront(StartStop):
    """A server object whose HTTP side is the :class:`InProcessServer` ``_http``: its port and URLs."""

    _http: InProcessServer

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def root_url(self) -> str:
        return self._http.root_url

    @property
    def base_url(self) -> str:
        """The API root including ``/v1`` (an OpenAI client's ``base_url``)."""
        return f"{self.root_url}/v1"
