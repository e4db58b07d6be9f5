"""The replay engine's timing model: a continuous-batching GPU as a pure, clock-free state machine.

:class:`BatchingModel` knows nothing of asyncio or wall time: its caller says when each engine
iteration starts (:meth:`BatchingModel.step`) and it answers how long the iteration takes under the
:class:`~dynasor_client.replay._profiles.GPUProfile` cost model. The same model therefore drives the
HTTP replay server in scaled real time (:class:`~dynasor_client.replay._timing_drivers.RealtimeDriver`)
and a discrete-event simulation on a virtual clock
(:class:`~dynasor_client.replay._timing_drivers.VirtualClockSimulator`).

One iteration starting at ``start``:

1. **Admission.** Waiting requests are admitted first come, first served, while the batch is below
   ``max_batch`` and free KV memory holds the request's whole reservation: its prompt (full blocks
   shared through the prefix cache, see :mod:`._timing_cache`) *and its whole output*. Reserving the
   output up front means a running request never runs out of memory, so the model needs no
   preemption (vLLM preempts and recomputes instead; for replay, where every output length is known
   in advance, reservation gives the same steady-state batch without the recompute bookkeeping). A
   request that does not fit blocks the ones behind it (head-of-line, like vLLM's FCFS scheduler).
   A request is not admitted before its arrival time.
2. **Prefill** of the admitted requests' prompt tokens that the prefix cache does not hold.
   A fully cached prompt still recomputes its last token (vLLM does, to get the first logits), so
   hits are capped at ``(prompt_tokens - 1) // block_size`` blocks.
3. **Decode:** every running request, the newly admitted included, gains one token (so a request's
   first token arrives at the end of the iteration that admitted it, as with chunked prefill).

The iteration takes ``a + b * running + c * kv_tokens + p * prefill_tokens`` seconds, ``kv_tokens``
being the context held by the running requests before the new tokens are appended. Requests whose
last token was produced leave at the end of the iteration and free their KV memory; their full prompt
blocks stay cached (evictable). :meth:`BatchingModel.abort` removes a request at once.

Costs: a step does not touch every running request. A request admitted in iteration ``i0`` has
produced ``min(output, n - i0)`` tokens once ``n`` iterations have run, so the model keeps one global
iteration counter, a heap of finishing iterations, running totals (``kv_tokens += running`` per step)
and one float per iteration (its end time, in an ``array('d')``) from which
:meth:`BatchingModel.generated_at` answers "how many tokens at time t" by bisection. A step costs
O(1) plus O(log n) per request admitted or finished.
"""

from __future__ import annotations

import enum
import heapq
import math
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field

from ._profiles import GPUProfile, get_profile
from ._timing_cache import BlockPool, block_hashes

__all__ = ["BatchingModel", "Metrics", "RequestState", "SimRequest"]


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False, slots=True)
class SimRequest:
    """One request in the model; times are modelled seconds (the caller's clock).

    Identity-hashed: usable as a dict key whatever its ``request_id``.
    """

    request_id: Hashable
    prompt_tokens: int
    output_tokens: int
    arrival_time: float
    block_hashes: tuple[int, ...] = field(repr=False)
    state: RequestState = RequestState.WAITING
    cached_prompt_tokens: int = 0
    """Prompt tokens served from the prefix cache (known once admitted)."""
    admit_iteration: int = -1
    """Index of the iteration that admitted (prefilled) the request; -1 while waiting."""
    admit_time: float | None = None
    """Start of the admitting iteration: ``admit_time - arrival_time`` is the queueing delay."""
    first_token_time: float | None = None
    finish_time: float | None = None
    """End of the iteration that produced the last token (None if aborted or not finished)."""
    abort_time: float | None = None
    aborted_generated: int = -1
    """Tokens produced by the abort time (for aborted requests)."""

    @property
    def finish_iteration(self) -> int:
        """Index of the iteration producing the last token (meaningful once admitted)."""
        return self.admit_iteration + self.output_tokens - 1


@dataclass(frozen=True, slots=True)
class Metrics:
    """A snapshot of the model's counters (token counts are counted when an iteration is scheduled)."""

    running: int
    waiting: int
    submitted: int
    finished: int
    aborted: int
    prompt_tokens: int
    """Prompt tokens of admitted requests."""
    cached_prompt_tokens: int
    """Of which served from the prefix cache."""
    tokens_generated: int
    prefix_cache_hit_rate: float
    """``cached_prompt_tokens / prompt_tokens`` (0 before any admission)."""
    kv_used_tokens: int
    """Reserved by running requests plus pinned blocks: memory not available to admissions."""
    kv_cached_evictable_tokens: int
    """Held by cached blocks no running request uses: reclaimable on demand."""
    kv_capacity_tokens: int
    evicted_blocks: int
    iterations: int
    busy_time_s: float
    """Sum of iteration durations (modelled seconds)."""
    clock_s: float
    """End of the last iteration (modelled seconds; 0 before the first)."""

    @property
    def kv_usage(self) -> float:
        return self.kv_used_tokens / self.kv_capacity_tokens

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out["kv_usage"] = self.kv_usage
        return out

    def to_prometheus(self, prefix: str = "vllm:") -> str:
        """Prometheus text exposition using vLLM's metric names where vLLM has one.

        Rendered by ``prometheus_client`` (the ``[server]`` extra): see :mod:`._metrics`.
        """
        from ._metrics import prometheus_text

        return prometheus_text(self, prefix)


class BatchingModel:
    """A continuous-batching GPU under a :class:`GPUProfile` (see the module docstring).

    Typical use: :meth:`submit` requests, then repeatedly ``start = model.next_step_time()`` and
    ``model.step(start)`` (the drivers do this), reading :attr:`last_admitted` and
    :attr:`last_finished` after each step.
    """

    def __init__(self, profile: GPUProfile | str) -> None:
        self.profile = get_profile(profile)
        p = self.profile
        self._a, self._b, self._c, self._p = (
            p.decode_base_s,
            p.decode_per_seq_s,
            p.decode_per_kv_token_s,
            p.prefill_per_token_s,
        )
        self._pool = BlockPool(p.kv_capacity_tokens, p.block_size)
        self._waiting: deque[SimRequest] = deque()
        self._n_waiting = 0
        self._running: dict[Hashable, SimRequest] = {}
        self._active: dict[Hashable, SimRequest] = {}
        self._finishing: list[tuple[int, int, SimRequest]] = []
        self._seq = 0
        self._ends = array("d")
        self._last_end = -math.inf
        self._kv_tokens = 0
        self.last_admitted: list[SimRequest] = []
        """Requests admitted by the latest :meth:`step`."""
        self.last_finished: list[SimRequest] = []
        """Requests that produced their last token in the latest :meth:`step`."""
        self._submitted = self._finished = self._aborted = 0
        self._prompt_tokens = self._cached_tokens = self._generated = 0
        self._busy = 0.0

    # ------------------------------------------------------------------ state

    @property
    def iteration(self) -> int:
        """Number of iterations run so far (the next one has this index)."""
        return len(self._ends)

    @property
    def clock(self) -> float:
        """End of the last iteration (0.0 before the first)."""
        return self._last_end if self._ends else 0.0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return self._n_waiting

    @property
    def kv_tokens(self) -> int:
        """Context (prompt + generated tokens) held by the running requests."""
        return self._kv_tokens

    @property
    def idle(self) -> bool:
        return not self._running and not self._n_waiting

    def request(self, request_id: Hashable) -> SimRequest | None:
        """The waiting or running request with this id."""
        return self._active.get(request_id)

    # ------------------------------------------------------------------ requests

    def new_request(
        self, request_id: Hashable, prompt_keys: Sequence[Hashable], output_tokens: int, arrival_time: float
    ) -> SimRequest:
        """A request ready for :meth:`enqueue` (validated, its prompt blocks hashed).

        ``prompt_keys`` has one stable key per prompt token; equal keys at equal positions mean the
        same token, so requests share the cached prefix on which their keys agree. The replay engine
        passes e.g. ``[(question_id, i) for i in range(prompt_tokens)]`` so that all samples of one
        question share their prompt. ``output_tokens`` counts every token the server produces
        (include the stop token): at least 1.
        """
        if output_tokens < 1:
            raise ValueError(f"request {request_id!r}: output_tokens must be >= 1, got {output_tokens}")
        total = len(prompt_keys) + output_tokens
        if total > self.profile.kv_capacity_tokens:
            raise ValueError(
                f"request {request_id!r} needs {total} tokens of KV cache (prompt + output), more than the "
                f"{self.profile.kv_capacity_tokens} of profile {self.profile.name!r}: it could never run"
            )
        return SimRequest(
            request_id=request_id,
            prompt_tokens=len(prompt_keys),
            output_tokens=output_tokens,
            arrival_time=arrival_time,
            block_hashes=block_hashes(prompt_keys, self.profile.block_size),
        )

    def enqueue(self, request: SimRequest) -> None:
        """Queue a request from :meth:`new_request` (ignored if it was aborted meanwhile)."""
        if request.state is RequestState.ABORTED:
            return
        if request.state is not RequestState.WAITING or request.admit_iteration >= 0:
            raise ValueError(f"request {request.request_id!r} was already queued")
        if request.request_id in self._active:
            raise ValueError(f"request id {request.request_id!r} is already waiting or running")
        self._active[request.request_id] = request
        self._waiting.append(request)
        self._n_waiting += 1
        self._submitted += 1

    def submit(
        self, request_id: Hashable, prompt_keys: Sequence[Hashable], output_tokens: int, now: float
    ) -> SimRequest:
        """Queue a request arriving at ``now`` (see :meth:`new_request`)."""
        request = self.new_request(request_id, prompt_keys, output_tokens, now)
        self.enqueue(request)
        return request

    def abort(self, request: Hashable | SimRequest, now: float) -> SimRequest | None:
        """Remove a waiting or running request at once, freeing its KV memory.

        ``request`` is a request id or a :class:`SimRequest` (which may not have been enqueued yet).
        Returns the aborted request, or None if it had already finished or was unknown. Its
        ``aborted_generated`` is the tokens produced by iterations ending at or before ``now``.
        """
        req = request if isinstance(request, SimRequest) else self._active.get(request)
        if req is None or req.state in (RequestState.FINISHED, RequestState.ABORTED):
            return None
        enqueued = self._active.get(req.request_id) is req
        if enqueued:
            del self._active[req.request_id]
        if req.state is RequestState.RUNNING:
            del self._running[req.request_id]
            counted = min(req.output_tokens, self.iteration - req.admit_iteration)
            self._kv_tokens -= req.prompt_tokens + counted
            self._pool.release(req.block_hashes, self._private_tokens(req))
            req.aborted_generated = self.generated_at(req, now)
            if req.aborted_generated == 0:
                req.first_token_time = None
        else:
            if enqueued:  # lazily dropped from the queue when it reaches the head
                self._n_waiting -= 1
            req.aborted_generated = 0
        req.state = RequestState.ABORTED
        req.abort_time = now
        self._aborted += 1
        return req

    # ------------------------------------------------------------------ stepping

    def next_step_time(self) -> float | None:
        """When the next iteration can start, or None when idle (nothing running or waiting)."""
        if self._running:
            return self._last_end
        head = self._head()
        if head is None:
            return None
        return max(self._last_end, head.arrival_time)

    def step(self, now: float) -> float | None:
        """Run one iteration starting at ``now`` (or at the previous iteration's end if later).

        Returns its duration, or None (and changes nothing) if there is nothing to run: no request
        running and none admissible by ``now``.
        """
        start = now if now > self._last_end else self._last_end
        admitted: list[SimRequest] = []
        prefill = 0
        pool, profile, running = self._pool, self.profile, self._running
        while self._n_waiting and len(running) < profile.max_batch:
            head = self._head()
            if head is None or head.arrival_time > start:
                break
            hashes = head.block_hashes
            max_hits = (head.prompt_tokens - 1) // profile.block_size if head.prompt_tokens else 0
            hits = pool.allocate(hashes, self._private_tokens(head), max_hits)
            if hits is None:
                break
            self._waiting.popleft()
            self._n_waiting -= 1
            head.state = RequestState.RUNNING
            head.admit_iteration = len(self._ends)
            head.admit_time = start
            head.cached_prompt_tokens = cached = hits * profile.block_size
            prefill += head.prompt_tokens - cached
            self._prompt_tokens += head.prompt_tokens
            self._cached_tokens += cached
            self._kv_tokens += head.prompt_tokens
            running[head.request_id] = head
            self._seq += 1
            heapq.heappush(self._finishing, (head.finish_iteration, self._seq, head))
            admitted.append(head)
        n = len(running)
        if not n:
            return None
        duration = self._a + self._b * n + self._c * self._kv_tokens + self._p * prefill
        end = start + duration
        index = len(self._ends)
        self._ends.append(end)
        self._last_end = end
        self._kv_tokens += n
        self._generated += n
        self._busy += duration
        for req in admitted:
            req.first_token_time = end
        finished: list[SimRequest] = []
        heap = self._finishing
        while heap and heap[0][0] <= index:
            req = heapq.heappop(heap)[2]
            if req.state is RequestState.RUNNING:
                req.state = RequestState.FINISHED
                req.finish_time = end
                del running[req.request_id]
                del self._active[req.request_id]
                self._kv_tokens -= req.prompt_tokens + req.output_tokens
                pool.release(req.block_hashes, self._private_tokens(req))
                self._finished += 1
                finished.append(req)
        self.last_admitted = admitted
        self.last_finished = finished
        return duration

    def _head(self) -> SimRequest | None:
        """The first waiting request, dropping aborted ones."""
        waiting = self._waiting
        while waiting and waiting[0].state is RequestState.ABORTED:
            waiting.popleft()
        return waiting[0] if waiting else None

    def _private_tokens(self, req: SimRequest) -> int:
        return req.prompt_tokens - len(req.block_hashes) * self.profile.block_size + req.output_tokens

    # ------------------------------------------------------------------ queries

    def generated(self, request: SimRequest, iterations: int | None = None) -> int:
        """Tokens the request had produced once ``iterations`` iterations had run (default: all so far)."""
        if request.admit_iteration < 0:
            return 0
        n = self.iteration if iterations is None else iterations
        count = min(request.output_tokens, max(0, n - request.admit_iteration))
        if request.state is RequestState.ABORTED:
            count = min(count, request.aborted_generated)
        return count

    def iterations_done_by(self, t: float) -> int:
        """How many iterations had ended at or before time ``t``."""
        return bisect_right(self._ends, t)

    def generated_at(self, request: SimRequest, t: float) -> int:
        """Tokens the request had produced at time ``t``."""
        if request.admit_iteration < 0:
            return 0
        return self.generated(request, bisect_right(self._ends, t))

    def iteration_end(self, index: int) -> float:
        """End time of iteration ``index``."""
        return self._ends[index]

    def metrics(self) -> Metrics:
        pool = self._pool
        evictable = pool.evictable_tokens
        return Metrics(
            running=len(self._running),
            waiting=self._n_waiting,
            submitted=self._submitted,
            finished=self._finished,
            aborted=self._aborted,
            prompt_tokens=self._prompt_tokens,
            cached_prompt_tokens=self._cached_tokens,
            tokens_generated=self._generated,
            prefix_cache_hit_rate=self._cached_tokens / self._prompt_tokens if self._prompt_tokens else 0.0,
            kv_used_tokens=pool.used_tokens - evictable,
            kv_cached_evictable_tokens=evictable,
            kv_capacity_tokens=pool.capacity_tokens,
            evicted_blocks=pool.evicted_blocks,
            iterations=self.iteration,
            busy_time_s=self._busy,
            clock_s=self.clock,
        )
