"""Two drivers of one :class:`~dynasor_client.replay._timing.BatchingModel`: virtual clock and real time.

:class:`VirtualClockSimulator` is a discrete-event simulation: it runs the model's iterations
back to back on a virtual clock, delivering scheduled arrivals when their time comes and calling
back on progress (:meth:`~VirtualClockSimulator.watch`) and completion. Nothing sleeps; thousands of
programs can be simulated in seconds.

:class:`RealtimeDriver` runs the same model in an asyncio task for the HTTP replay server: after
each iteration it sleeps the iteration's duration times ``time_scale`` (1.0 is the modelled GPU's
real speed; 0 runs as fast as possible, only yielding to the event loop) and then wakes the
:class:`RequestHandle` waiters whose token counts were reached.

Clock of the real-time driver. Modelled time advances *by the model's own durations* while the GPU
is busy: an iteration starts exactly when the previous one ends, whatever the event loop's latency,
so a slow host makes the replay lag in wall time but never changes the modelled latencies. Wall
time maps to modelled time only while idle and for arrivals: a request submitted at wall time ``w``
arrives at ``t0 + (w - w0) / time_scale`` for the latest anchor ``(t0, w0)`` (an iteration's start,
or the end of the last iteration before going idle), capped at the end of the running iteration and
never earlier than the previous arrival. Sleeps aim at the anchor's absolute schedule, so timer
overshoot does not accumulate; a lag over 50 ms of wall time is given up rather than caught up.
Hence a virtual-clock run fed the arrival times a real-time run recorded
(:attr:`RequestHandle.arrival_time`) reproduces its per-request times exactly.

Waiters are kept in a heap keyed by the iteration count at which their token target is reached
(``admit_iteration + tokens``; requests still waiting park their watchers until admitted), so an
iteration wakes only the waiters it satisfies, not every open request.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import Callable, Hashable, Sequence
from types import TracebackType
from typing import Generic, TypeVar

from ._profiles import GPUProfile
from ._timing import BatchingModel, Metrics, RequestState, SimRequest

__all__ = ["RealtimeDriver", "RequestHandle", "VirtualClockSimulator", "WatchQueue"]

T = TypeVar("T")

_MAX_CATCH_UP_S = 0.05
"""Wall-clock lag (seconds) the real-time driver still catches up; a larger lag is given up."""


def _as_model(model: BatchingModel | GPUProfile | str) -> BatchingModel:
    return model if isinstance(model, BatchingModel) else BatchingModel(model)


class _Watch(Generic[T]):
    __slots__ = ("done", "payload", "request", "tokens")

    def __init__(self, request: SimRequest, tokens: int, payload: T) -> None:
        self.request = request
        self.tokens = tokens
        self.payload = payload
        self.done = False


class WatchQueue(Generic[T]):
    """Payloads due when a request reaches a token count: a heap keyed by the iteration count."""

    __slots__ = ("_by_request", "_heap", "_parked", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, _Watch[T]]] = []
        self._parked: dict[SimRequest, list[_Watch[T]]] = {}
        self._by_request: dict[SimRequest, list[_Watch[T]]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap) + sum(len(ws) for ws in self._parked.values())

    def add(self, request: SimRequest, tokens: int, payload: T) -> None:
        """Make ``payload`` due once ``request`` has produced ``tokens`` (1..output) tokens."""
        watch = _Watch(request, tokens, payload)
        self._by_request.setdefault(request, []).append(watch)
        if request.admit_iteration >= 0:
            self._push(watch)
        else:
            self._parked.setdefault(request, []).append(watch)

    def _push(self, watch: _Watch[T]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (watch.request.admit_iteration + watch.tokens, self._seq, watch))

    def admitted(self, requests: Sequence[SimRequest]) -> None:
        """Schedule the parked watches of newly admitted requests."""
        if self._parked:
            for request in requests:
                for watch in self._parked.pop(request, ()):
                    if not watch.done:
                        self._push(watch)

    def pending(self) -> bool:
        """Whether any admitted request's watch may come due."""
        return bool(self._heap)

    def pop_due(self, iterations: int) -> list[tuple[SimRequest, T]]:
        """(request, payload) of the watches reached once ``iterations`` iterations have run."""
        heap = self._heap
        due: list[tuple[SimRequest, T]] = []
        while heap and heap[0][0] <= iterations:
            watch = heapq.heappop(heap)[2]
            if not watch.done:
                watch.done = True
                due.append((watch.request, watch.payload))
        return due

    def cancel(self, request: SimRequest) -> list[T]:
        """Remove every pending watch of a request (aborted); their payloads."""
        self._parked.pop(request, None)
        out: list[T] = []
        for watch in self._by_request.pop(request, ()):
            if not watch.done:
                watch.done = True
                out.append(watch.payload)
        return out

    def forget(self, request: SimRequest) -> None:
        """Drop the bookkeeping of a finished request (its watches have all come due)."""
        self._by_request.pop(request, None)


# ---------------------------------------------------------------------------- virtual clock

FinishCallback = Callable[[SimRequest], None]
"""Called with a request when it finishes or is aborted; the simulator's ``now`` is the time."""
WatchCallback = Callable[[SimRequest, int], None]
"""Called with a request and its token count when a watch fires."""


class VirtualClockSimulator:
    """Discrete-event simulation of a :class:`BatchingModel` on a virtual clock.

    Schedule requests with :meth:`submit` (at a time, with an optional completion callback), watch
    their progress with :meth:`watch`, and advance with :meth:`run`. Callbacks run with :attr:`now`
    set to the event's time and may submit (at ``now`` or later), watch or abort; a request submitted
    at ``now`` from a callback is admitted by the iteration starting at ``now``.
    """

    def __init__(self, model: BatchingModel | GPUProfile | str) -> None:
        self.model = _as_model(model)
        self.now = 0.0
        self._arrivals: list[tuple[float, int, SimRequest]] = []
        self._seq = 0
        self._on_finish: dict[SimRequest, FinishCallback] = {}
        self._watches: WatchQueue[WatchCallback] = WatchQueue()

    def submit(
        self,
        request_id: Hashable,
        prompt_keys: Sequence[Hashable],
        output_tokens: int,
        *,
        at: float | None = None,
        on_finish: FinishCallback | None = None,
    ) -> SimRequest:
        """Schedule a request to arrive at ``at`` (default :attr:`now`); see ``BatchingModel.new_request``."""
        at = self.now if at is None else at
        if at < self.now:
            raise ValueError(f"cannot submit request {request_id!r} at {at}, before now ({self.now})")
        request = self.model.new_request(request_id, prompt_keys, output_tokens, at)
        if on_finish is not None:
            self._on_finish[request] = on_finish
        self._seq += 1
        heapq.heappush(self._arrivals, (at, self._seq, request))
        return request

    def watch(self, request: SimRequest, after_tokens: int, callback: WatchCallback) -> None:
        """Call ``callback(request, generated)`` once more than ``after_tokens`` tokens exist.

        Fires at the end of the iteration producing token ``after_tokens + 1`` (or the last token),
        or at once if already there; an abort fires pending watches with the count at the abort.
        """
        generated = self.model.generated(request)
        if generated > after_tokens or request.state in (RequestState.FINISHED, RequestState.ABORTED):
            callback(request, generated)
            return
        self._watches.add(request, min(after_tokens + 1, request.output_tokens), callback)

    def abort(self, request: SimRequest | Hashable) -> SimRequest | None:
        """Abort a request now (pending watches and its completion callback fire at once)."""
        req = self.model.abort(request, self.now)
        if req is not None:
            for callback in self._watches.cancel(req):
                callback(req, req.aborted_generated)
            finish = self._on_finish.pop(req, None)
            if finish is not None:
                finish(req)
        return req

    def run(self, until: float | None = None) -> float:
        """Advance until idle, or until the next event would start after ``until``; returns :attr:`now`.

        An iteration starting at or before ``until`` runs to its end, so :attr:`now` may pass
        ``until`` by one iteration.
        """
        model, arrivals, watches = self.model, self._arrivals, self._watches
        while True:
            start = model.next_step_time()
            if start is None:
                if not arrivals:
                    return self.now
                start = arrivals[0][0]
            if until is not None and start > until:
                self.now = max(self.now, until)
                return self.now
            while arrivals and arrivals[0][0] <= start:
                model.enqueue(heapq.heappop(arrivals)[2])
            if model.step(start) is None:  # pragma: no cover - next_step_time()/arrivals say it can run
                raise RuntimeError(f"BatchingModel could not step at {start}")
            self.now = model.clock
            if model.last_admitted:
                watches.admitted(model.last_admitted)
            if watches.pending():
                for req, callback in watches.pop_due(model.iteration):
                    callback(req, model.generated(req))
            for req in model.last_finished:
                watches.forget(req)
                finish = self._on_finish.pop(req, None)
                if finish is not None:
                    finish(req)

    def metrics(self) -> Metrics:
        return self.model.metrics()


# ---------------------------------------------------------------------------- real time


class RequestHandle:
    """A request running under a :class:`RealtimeDriver`; counts follow the delivered iterations."""

    __slots__ = ("_driver", "request")

    def __init__(self, driver: RealtimeDriver, request: SimRequest) -> None:
        self._driver = driver
        self.request = request

    @property
    def request_id(self) -> Hashable:
        return self.request.request_id

    @property
    def generated(self) -> int:
        """Tokens produced by the iterations whose (scaled) time has passed."""
        return self._driver.model.generated(self.request, self._driver.delivered_iterations)

    @property
    def finished(self) -> bool:
        """All tokens produced and delivered."""
        req = self.request
        return req.state is RequestState.FINISHED and req.finish_iteration < self._driver.delivered_iterations

    @property
    def aborted(self) -> bool:
        return self.request.state is RequestState.ABORTED

    @property
    def done(self) -> bool:
        return self.finished or self.aborted

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.request.output_tokens

    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens served from the prefix cache (0 until admitted)."""
        return self.request.cached_prompt_tokens

    @property
    def arrival_time(self) -> float:
        """Modelled arrival time."""
        return self.request.arrival_time

    @property
    def first_token_time(self) -> float | None:
        """Modelled time of the first token (known from admission on)."""
        return self.request.first_token_time

    @property
    def finish_time(self) -> float | None:
        """Modelled time of the last token (known from the last iteration's start on)."""
        return self.request.finish_time

    async def wait(self, after_tokens: int = 0) -> int:
        """Wait until more than ``after_tokens`` tokens are delivered or the request is done.

        Returns :attr:`generated`. Streaming loop: ``sent = 0; while not h.done: n = await
        h.wait(sent); emit tokens sent..n; sent = n``.
        """
        generated = self.generated
        if generated > after_tokens or self.done:
            return generated
        return await self._driver._wait(self, min(after_tokens + 1, self.request.output_tokens))

    def abort(self) -> bool:
        """Remove the request at once (client disconnect), freeing its KV; False if already done."""
        return self._driver.abort(self)


class RealtimeDriver:
    """Runs a :class:`BatchingModel` in scaled real time in a background asyncio task.

    Use as ``async with RealtimeDriver("llama3-8b-a100-80gb", time_scale=1.0) as driver:`` then
    ``handle = driver.submit(...)`` and ``await handle.wait(n)``. See the module docstring for the
    clock. Leaving the context stops the task and releases every waiter.
    """

    def __init__(
        self,
        model: BatchingModel | GPUProfile | str,
        *,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale >= 0):
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale!r}")
        self.model = _as_model(model)
        self.time_scale = time_scale
        self._clock = clock
        self._anchor_model = self.model.clock
        self._anchor_wall = clock()
        self._cap = math.inf
        self._last_now = -math.inf
        self.delivered_iterations = self.model.iteration
        """Iterations whose scaled duration has elapsed: what handles report."""
        self._watches: WatchQueue[asyncio.Future[int]] = WatchQueue()
        self._handles: dict[SimRequest, RequestHandle] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> RealtimeDriver:
        if self._task is not None:
            raise RuntimeError("a RealtimeDriver can be started only once")
        self._anchor_wall = self._clock()
        self._task = asyncio.create_task(self._run(), name="replay-timing-driver")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the background task and release every pending waiter with its current count."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for request, handle in list(self._handles.items()):
            for future in self._watches.cancel(request):
                if not future.done():
                    future.set_result(handle.generated)
        self._handles.clear()

    def now(self) -> float:
        """The modelled time now (see the module docstring)."""
        if self.time_scale == 0:  # modelled time moves only with the iterations
            t = self.model.clock
        else:
            t = self._anchor_model + (self._clock() - self._anchor_wall) / self.time_scale
            if t > self._cap:
                t = self._cap
        if t < self._last_now:
            t = self._last_now
        self._last_now = t
        return t

    def submit(
        self, request_id: Hashable, prompt_keys: Sequence[Hashable], output_tokens: int
    ) -> RequestHandle:
        """Queue a request arriving now; see ``BatchingModel.new_request`` for the arguments."""
        if not self.running:
            raise RuntimeError("RealtimeDriver is not running: use `async with driver:`")
        request = self.model.submit(request_id, prompt_keys, output_tokens, self.now())
        handle = RequestHandle(self, request)
        self._handles[request] = handle
        self._wake.set()
        return handle

    def abort(self, handle: RequestHandle | Hashable) -> bool:
        """Abort a request by handle or id: its KV is freed at once and its waiters return."""
        request = handle.request if isinstance(handle, RequestHandle) else self.model.request(handle)
        if request is None:
            return False
        delivered = self.model.generated(request, self.delivered_iterations)
        aborted = self.model.abort(request, self.now())
        if aborted is None:
            return False
        # Freeze the count at what handles have seen, so later deliveries never raise it.
        aborted.aborted_generated = delivered
        self._handles.pop(aborted, None)
        for future in self._watches.cancel(aborted):
            if not future.done():
                future.set_result(delivered)
        self._wake.set()  # a freed slot may admit a waiting request
        return True

    def metrics(self) -> Metrics:
        return self.model.metrics()

    async def _wait(self, handle: RequestHandle, tokens: int) -> int:
        if not self.running:
            raise RuntimeError("RealtimeDriver is not running: use `async with driver:`")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watches.add(handle.request, tokens, future)
        return await future

    async def _run(self) -> None:
        model, watches, scale = self.model, self._watches, self.time_scale
        while True:
            start = model.next_step_time()
            if start is None:  # idle: keep mapping wall time from the last iteration's end
                self._cap = math.inf
                self._wake.clear()
                await self._wake.wait()
                continue
            duration = model.step(start)
            if duration is None:  # pragma: no cover - next_step_time() promised an admissible request
                await asyncio.sleep(0)
                continue
            admitted, finished = model.last_admitted, model.last_finished
            wall = self._clock()
            ideal = self._anchor_wall + (start - self._anchor_model) * scale
            self._anchor_model = start
            self._anchor_wall = ideal if wall - ideal <= _MAX_CATCH_UP_S else wall
            self._cap = start + duration
            if admitted:
                watches.admitted(admitted)
            await asyncio.sleep(max(0.0, self._anchor_wall + duration * scale - self._clock()))
            delivered = self.delivered_iterations = model.iteration
            for request, future in watches.pop_due(delivered):
                if not future.done():
                    future.set_result(model.generated(request, delivered))
            for request in finished:
                watches.forget(request)
                self._handles.pop(request, None)
