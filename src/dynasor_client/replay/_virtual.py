"""The client stack against the replay server's timing model, in-process, on a virtual clock.

:class:`VirtualTimeLoop` is an asyncio event loop whose :meth:`~VirtualTimeLoop.time` is virtual:
whenever nothing is runnable it jumps straight to the next scheduled timer instead of sleeping, so
``await asyncio.sleep(3600)`` returns at once with ``loop.time()`` one hour later. Everything built
on the loop's clock follows it: ``asyncio.sleep``, ``asyncio.timeout``/``wait_for``,
``loop.call_at``/``call_later``, task groups. :func:`run_virtual` runs a coroutine on one, like
:func:`asyncio.run`.

:class:`InProcessReplay` is the replay server (:class:`~._server.ReplayServer`: the same engine,
timing driver and ASGI application) without a socket: its :meth:`~InProcessReplay.endpoint` gives
an :class:`~dynasor_client.Endpoint` whose requests reach the application through
:class:`httpx.ASGITransport`, inside the calling task. Its timing driver runs at ``time_scale=1``
on the running loop's clock, so on a :class:`VirtualTimeLoop` a modelled GPU second is one
second of loop time and a benchmark simulates minutes of GPU time in seconds of CPU::

    async def main() -> None:
        async with InProcessReplay("traces.jsonl") as replay, replay.endpoint() as endpoint:
            started = asyncio.get_running_loop().time()
            await endpoint.complete("Question: ...", max_tokens=256)
            print("modelled latency", asyncio.get_running_loop().time() - started)

    run_virtual(main())

Under the standard event loop it works too, in real time (a modelled second takes a second).

**When the virtual clock moves.** The loop polls for I/O without waiting; only when nothing is
runnable, no I/O is ready and no executor job is pending does it set its clock to the next timer's
time. While a job of ``loop.run_in_executor`` or :func:`asyncio.to_thread` is pending the clock
stands still and the loop waits for real, so a thread's result is never overtaken by virtual time
(:meth:`VirtualTimeLoop.hold` extends the same rule to any other future a thread completes). When
nothing is runnable, nothing is pending and no timer is scheduled, no event can ever come: the loop
raises :class:`VirtualTimeDeadlock` instead of hanging.

**Limits.**

- No real network I/O: a socket's data is seen only when the loop polls, so a request to a real
  server waits in virtual time (timers fire first, timeouts expire at once). Use the in-process
  transport (``httpx.ASGITransport``), not :class:`~._server.ReplayServer` or any other socket.
- CPU time is free: code between two awaits takes no virtual time, so virtual timings count the
  modelled GPU (and sleeps) only, never the client's own overhead.
- Threads other than executor jobs (``anyio.to_thread``, hand-made threads reporting through
  ``call_soon_threadsafe``) are invisible to the clock unless their future is passed to
  :meth:`~VirtualTimeLoop.hold`. Subprocesses are not supported.
- Wall clocks stay wall clocks: ``time.perf_counter``/``time.monotonic`` (e.g. ``Generation.latency_s``,
  the ``requests_per_second`` throttle of an endpoint, the retry policy's time budget) do not follow
  the virtual clock. Measure with ``loop.time()``.
- With :class:`httpx.ASGITransport` a response arrives whole: streaming works but delivers every
  event at the end, and client timeouts are not enforced (no socket to time out).
- Timers due at the same virtual instant run in asyncio's heap order: deterministic, but not
  necessarily the order in which they were set (in real time such exact ties do not happen).
- An endpoint still holds at most ``max_in_flight`` requests in flight (default 64): raise it to
  model more concurrent clients.
"""

from __future__ import annotations

import asyncio
import math
import selectors
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack

import httpx

from .._exceptions import DynasorError
from .._serving import StartStop
from ..endpoints import Endpoint
from ..traces import TraceQuestion
from ._engine import ProbeFallback
from ._parts import ReplayParts
from ._profiles import GPUProfile

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from ._service import LogprobsShape, ReplayService

__all__ = ["InProcessReplay", "VirtualTimeDeadlock", "VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_MAX_SELECT_TIMEOUT = 24 * 3600.0
"""asyncio's cap on one wait of the selector (``base_events.MAXIMUM_SELECT_TIMEOUT``)."""


class VirtualTimeDeadlock(DynasorError, RuntimeError):
    """Every task waits, yet no timer, executor job or I/O could ever wake the virtual-time loop."""


class _Selector(selectors.BaseSelector):
    """The platform's selector, with :meth:`select` deciding between waiting and jumping in time."""

    def __init__(self) -> None:
        self.real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: FileDescriptorLike, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self.real.unregister(fileobj)

    def modify(self, fileobj: FileDescriptorLike, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.loop is None:
            return self.real.select(timeout)
        return self.loop._select(self.real, timeout)

    def close(self) -> None:
        self.real.close()

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self.real.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self.real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on a virtual clock (see the module docstring for the rules and limits).

    ``start`` is the initial :meth:`time`. Use it through :func:`run_virtual`, or as
    ``asyncio.Runner(loop_factory=VirtualTimeLoop)``.
    """

    def __init__(self, *, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"start must be a finite number, got {start!r}")
        self._virtual_now = float(start)
        self._held: set[asyncio.Future[Any]] = set()
        self._holding = 0
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        """The virtual time (seconds)."""
        return self._virtual_now

    @property
    def pending_jobs(self) -> int:
        """Executor jobs (and :meth:`hold` futures) not done yet: while any is, the clock stands still."""
        return len(self._held) + self._holding

    def hold(self, future: asyncio.Future[Any]) -> None:
        """Keep the clock still until ``future`` is done (it must be completed by another thread).

        Executor jobs are held automatically; use this for a future that a thread of your own
        completes through ``call_soon_threadsafe``. A future that only a timer of this loop could
        complete would wait for ever.
        """
        if not future.done():
            self._held.add(future)
            future.add_done_callback(self._held.discard)

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.hold(future)
        return future

    if sys.version_info >= (3, 12):

        async def shutdown_default_executor(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
            self._holding += 1  # the executor is joined in a thread that reports through a future
            try:
                await super().shutdown_default_executor(timeout)
            finally:
                self._holding -= 1

    else:

        async def shutdown_default_executor(self) -> None:
            self._holding += 1
            try:
                await super().shutdown_default_executor()
            finally:
                self._holding -= 1

    def _select(
        self, real: selectors.BaseSelector, timeout: float | None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        """The loop's wait for events: poll, then wait for threads, or jump to the next timer."""
        ready = real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if self._held or self._holding:
            # A thread is working: time stands still until it reports (through the self-pipe).
            return real.select(None)
        if timeout is None:
            others = len(real.get_map()) - 1  # less the loop's own self-pipe
            raise VirtualTimeDeadlock(
                "virtual-time event loop deadlock: every task is waiting, yet no timer is scheduled, "
                "no executor job is pending and no I/O is ready, so nothing can ever wake the loop"
                + (
                    f" ({others} file descriptor(s) are registered: real sockets are not supported "
                    "on a virtual clock)"
                    if others > 0
                    else ""
                )
            )
        target = self._virtual_now + timeout
        scheduled: Sequence[asyncio.TimerHandle] = getattr(self, "_scheduled", ())
        if scheduled and timeout < _MAX_SELECT_TIMEOUT:
            # The wait is the distance to the first timer: land on its time exactly, not on a
            # float sum that may fall a rounding error short of it.
            target = max(target, scheduled[0].when())
        self._virtual_now = max(self._virtual_now, target)
        return []


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0, debug: bool | None = None) -> T:
    """Run ``main`` on a new :class:`VirtualTimeLoop` (starting at ``start``) and return its result.

    Like :func:`asyncio.run`: the remaining tasks are cancelled, async generators and the default
    executor shut down, and the loop closed at the end. Raises :class:`VirtualTimeDeadlock` if the
    program waits on something that can never happen.
    """
    with asyncio.Runner(debug=debug, loop_factory=lambda: VirtualTimeLoop(start=start)) as runner:
        return runner.run(main)


# ---------------------------------------------------------------------------- the in-process server


def _loop_time() -> float:
    """The running event loop's clock (``time.monotonic``, the standard loop's, outside one)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class InProcessReplay(ReplayParts, StartStop):
    """The replay server in this process with no socket, timed on the running loop's clock.

    ``async with InProcessReplay(traces) as replay:`` then ``async with replay.endpoint() as ep:``.
    The engine, timing driver, service and ASGI application are those of
    :class:`~._server.ReplayServer` (same arguments, same answers for the same requests and seed);
    the driver runs at ``time_scale=1`` on ``loop.time()``, so on a :class:`VirtualTimeLoop`
    modelled GPU time *is* loop time, offset by :attr:`origin` (the loop time at which the replay
    started: modelled time 0). Cancelling a task awaiting a request aborts the request in the timing
    model at once (its KV freed), as a client disconnect does over HTTP.

    Args:
        traces: a traces file or already loaded questions.
        profile: the GPU profile (default ``"llama3-8b-h100-80gb"``).
        seed: the server seed of every draw.
        model: the model name served (default ``replay-<traces file stem>``).
        logprobs_shape, probe_fallback, flush_interval_s, record_submissions: as for
            :class:`~._server.ReplayServer`.
    """

    base_url = "http://replay.in-process/v1"
    """The URL endpoints use (the host is never resolved: requests go to the ASGI app)."""

    def __init__(
        self,
        traces: str | Path | Sequence[TraceQuestion],
        *,
        profile: str | GPUProfile = "llama3-8b-h100-80gb",
        seed: int = 0,
        model: str | None = None,
        logprobs_shape: LogprobsShape = "auto",
        probe_fallback: ProbeFallback = "explicit",
        flush_interval_s: float = 0.05,
        record_submissions: bool = False,
    ) -> None:
        from ._server import _build_service  # needs the [server] extra

        self.service: ReplayService = _build_service(
            traces,
            profile=profile,
            time_scale=1.0,
            seed=seed,
            model=model,
            logprobs_shape=logprobs_shape,
            probe_fallback=probe_fallback,
            flush_interval_s=flush_interval_s,
            record_submissions=record_submissions,
            clock=_loop_time,
        )
        self._serve(self.service)
        self.transport = httpx.ASGITransport(app=self.app)
        """The transport every endpoint of this replay uses (requests run in the caller's task)."""
        self.origin: float | None = None
        """The loop time at which the replay started (modelled time 0); None before."""

    def endpoint(self, **kwargs: Any) -> Endpoint:
        """An :class:`~dynasor_client.Endpoint` on this replay (close it, e.g. ``async with``).

        Keywords go to ``Endpoint``; the defaults here are ``capabilities=`` :attr:`capabilities`,
        ``model=`` :attr:`model` (no ``/v1/models`` lookup) and ``stream=False`` (an in-process
        response arrives whole anyway).
        """
        kwargs.setdefault("capabilities", self.capabilities)
        kwargs.setdefault("model", self.model)
        kwargs.setdefault("stream", False)
        kwargs.setdefault("name", "replay-in-process")
        return Endpoint(self.base_url, transport=self.transport, **kwargs)

    def now(self) -> float:
        """The modelled time now (on a virtual loop: ``loop.time() - origin``)."""
        return self.driver.now()

    async def start(self) -> None:
        """Start the timing driver in the running loop."""
        if self.origin is not None:
            raise RuntimeError("this InProcessReplay was already started")
        await self.driver.__aenter__()
        self.origin = asyncio.get_running_loop().time()

    async def stop(self) -> None:
        """Stop the timing driver; requests still waiting are answered 503."""
        await self.driver.close()
