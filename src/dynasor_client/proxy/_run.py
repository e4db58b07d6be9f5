"""One client request running as a program of the runtime, and the HTTP response that serves it.

A :class:`Run` submits the request's program to the proxy's runtime. The program pushes SSE events
(already framed bytes) into the run's queue as it produces them; when the program ends, for any
reason, an end marker follows. :class:`RunResponse` serves the run:

- it sends nothing until the first event or the end arrives, so a request that fails before its
  first event gets a proper HTTP error (status and OpenAI error body), streaming or not, and so
  does a result the renderer refuses (a deadline missed with nothing to answer);
- once the first event is there it starts the SSE stream and forwards events as they come (events
  queued meanwhile go out together); the renderer then adds the tail (final chunks, usage,
  ``[DONE]``), or an error event if the program failed mid-stream;
- a listener waits for the client's disconnect the whole time (also while nothing is sent, e.g.
  during a vote) and cancels the program at once: its in-flight upstream requests are closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._log import get_logger
from ..program import ProgramContext, ProgramResult
from . import _sse
from ._errors import ProxyError
from ._keys import Budget, Share

log = get_logger("dynasor_client.proxy")

ProgramBody = Callable[[ProgramContext, "Run"], Awaitable[ProgramResult]]


class Submitter(Protocol):
    """What a run needs of the runtime (see ``dynasor_client.runtime.Runtime.submit``)."""

    def submit(
        self,
        program: Callable[[Any], Awaitable[ProgramResult]],
        *,
        deadline_s: float | None = None,
        token_cap: int | None = None,
        program_id: str | None = None,
        name: str | None = None,
    ) -> Any: ...


class Renderer(Protocol):
    """Turns a run's outcome into what the client gets."""

    def whole(self, result: ProgramResult) -> Response:
        """The response of a run that ended before any event (non-streaming, or a vote)."""
        ...

    def tail(self, result: ProgramResult) -> list[bytes]:
        """The events that end a stream after the program's own (``[DONE]`` included)."""
        ...

    def error(self, exc: BaseException) -> ProxyError:
        """The error answered for a failed run."""
        ...

    def refusal(self, result: ProgramResult) -> ProxyError | None:
        """The error answered instead of a result, before any event was sent (None: none)."""
        ...

    def headers(self, result: ProgramResult | None) -> dict[str, str]:
        """Extra headers of a stream that starts once the run ended (``result``) or before (None)."""
        ...


class Run:
    """One request's program in the runtime, with the queue of events it streams (module docs)."""

    def __init__(
        self,
        runtime: Submitter,
        body: ProgramBody,
        *,
        deadline_s: float | None,
        token_cap: int | None,
        name: str,
        on_end: Callable[[Run], None],
        buffer: int = 64,
        stall_s: float | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.events = _Events(buffer)
        self.stall_s = stall_s  # how long the client may leave the stream unread (None: for ever)
        self.context: ProgramContext | None = None
        self.started = time.monotonic()
        self.state: dict[str, Any] = {}  # what the program leaves for the renderer
        #: The run's part of its key's budget: its requests reserve and charge it as they go.
        self.share = Share(budget) if budget is not None and budget.limit is not None else None

        async def program(context: ProgramContext) -> ProgramResult:
            self.context = context
            context.bill_aborted = True  # a key is billed for what its aborted requests streamed
            if self.share is not None:
                context.share(self.share)
            return await body(context, self)

        self.handle = runtime.submit(program, deadline_s=deadline_s, token_cap=token_cap, name=name)
        self.task: asyncio.Task[ProgramResult] = asyncio.ensure_future(self._finish())
        self.task.add_done_callback(_retrieve)
        self.task.add_done_callback(lambda _: on_end(self))

    async def _finish(self) -> ProgramResult:
        try:
            result: ProgramResult = await self.handle
            return result
        finally:  # the task is done by the time the reader wakes up on the end marker
            self.events.put_nowait(None)

    def send(self, data: bytes) -> None:
        """Queue one SSE event for the client (called by the program)."""
        self.events.put_nowait(data)

    async def relay(self, data: bytes) -> None:
        """Queue one SSE event for the client once fewer than ``buffer`` are unread (backpressure:
        a program relaying an upstream stream stops reading it while the client does not read)."""
        await self.events.room()
        self.events.put_nowait(data)

    def cancel(self) -> None:
        """Abort the program (its in-flight upstream requests are closed)."""
        if not self.task.done():
            self.handle.cancel()

    def outcome(self) -> ProgramResult | BaseException:
        if self.task.cancelled():
            return asyncio.CancelledError()
        exc = self.task.exception()
        return exc if exc is not None else self.task.result()


class RunResponse(Response):
    """Serves a :class:`Run` (module docs)."""

    def __init__(self, run: Run, renderer: Renderer, *, stream: bool) -> None:
        super().__init__(status_code=200)
        self.run, self.renderer, self.stream = run, renderer, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = False

        def disconnected(listener: asyncio.Future[None]) -> None:
            nonlocal gone
            if not listener.cancelled():
                gone = True
                self.run.cancel()

        listener = asyncio.ensure_future(_disconnect(receive))
        listener.add_done_callback(disconnected)
        try:
            await self._serve(scope, receive, self._paced(send), lambda: gone)
        except OSError:  # the connection dropped while sending
            self.run.cancel()
        except _Stalled:  # the app returns with the response unfinished: uvicorn closes the connection
            log.warning(
                "a client left its stream unread for %.0f s: upstream request aborted, connection closed",
                self.run.stall_s,
            )
            self.run.cancel()
        finally:
            listener.cancel()
            self.run.cancel()

    def _paced(self, send: Send) -> Send:
        """``send``, failing with :class:`_Stalled` when a body message waits more than the run's
        ``stall_s`` for the client to read (the transport stays paused)."""
        stall_s = self.run.stall_s
        if stall_s is None:
            return send

        async def paced(message: MutableMapping[str, Any]) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            try:
                async with asyncio.timeout(stall_s):  # no task per message, unlike wait_for
                    await send(message)
            except TimeoutError:
                raise _Stalled from None

        return paced

    async def _serve(self, scope: Scope, receive: Receive, send: Send, gone: Callable[[], bool]) -> None:
        first = await self.run.events.get()
        if first is None:
            if gone():
                return
            outcome = self.run.outcome()
            refused = None if isinstance(outcome, BaseException) else self.renderer.refusal(outcome)
            if isinstance(outcome, BaseException):
                response: Response = self.renderer.error(outcome).response()
            elif refused is not None:
                response = refused.response()
            elif self.stream:
                await _start_stream(send, self.renderer.headers(outcome))
                for data in self.renderer.tail(outcome):
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            else:
                response = self.renderer.whole(outcome)
            await response(scope, _never, send)
            return
        await _start_stream(send, self.renderer.headers(None))
        pending, ended = [first], False
        while True:
            while not self.run.events.empty():  # whatever queued meanwhile goes out together
                more = self.run.events.get_nowait()
                if more is None:
                    ended = True
                    break
                pending.append(more)
            if pending:
                await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending = []
            if ended:
                break
            item = await self.run.events.get()
            if item is None:
                break
            pending.append(item)
        if gone():
            return
        outcome = self.run.outcome()
        tail = (
            [_sse.event(self.renderer.error(outcome).body())]
            if isinstance(outcome, BaseException)
            else (self.renderer.tail(outcome))
        )
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})


class _Stalled(Exception):
    """The client left its stream unread for the run's ``stall_s``."""


class _Events(asyncio.Queue[bytes | None]):
    """A run's event queue: :meth:`room` waits while ``bound`` events are unread (``put_nowait``
    itself never refuses: the end marker and a dynasor program's own events always go in)."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound
        self.most = 0  # the most events ever queued at once
        self._room = asyncio.Event()
        self._room.set()

    def _put(self, item: bytes | None) -> None:
        super()._put(item)
        self.most = max(self.most, self.qsize())
        if self.qsize() >= self.bound:
            self._room.clear()

    def _get(self) -> bytes | None:
        item: bytes | None = super()._get()
        if self.qsize() < self.bound:
            self._room.set()
        return item

    async def room(self) -> None:
        await self._room.wait()


def _retrieve(task: asyncio.Task[ProgramResult]) -> None:
    """Mark a run's exception as seen (the response reports it, or the client has gone)."""
    if not task.cancelled():
        task.exception()


async def _start_stream(send: Send, extra: dict[str, str]) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    headers += [(k.encode(), v.encode()) for k, v in {**_sse.HEADERS, **extra}.items()]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _never() -> dict[str, Any]:  # a sub-response must not read the request again
    await asyncio.Event().wait()
    return {}
