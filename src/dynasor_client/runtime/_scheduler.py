"""The client-side scheduler: a window of requests in flight, the rest queued in policy order.

The server serves roughly first come, first served; what we send and when is ours to decide. At
most ``window`` sequences (a request of ``n`` samples counts ``n``) are in flight; the rest wait in a
heap ordered by the policy's key. With ``gang=True`` a program's concurrent requests (its samples,
its tree's expansions, a chunk and its probe) wait as one entry and are dispatched together; the
head gang may overshoot the window rather than be split. Dispatching is event driven (a request
joins, a request ends): no background task.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from .._exceptions import BudgetExhausted
from ..program import StopReason
from ._policies import SchedulingPolicy
from ._states import ProgramRecord, ProgramState


class QueueEntry:
    """A program's requests waiting together: (future, sequences) pairs."""

    __slots__ = ("key", "live", "record", "since", "waiters")

    def __init__(self, record: ProgramRecord, key: float, since: float) -> None:
        self.record, self.key, self.since = record, key, since
        self.waiters: list[tuple[asyncio.Future[None], int]] = []
        self.live = True


class Scheduler:
    """See the module docs. ``check(program)`` is asked before a grant: a stop reason refuses it."""

    def __init__(
        self,
        policy: SchedulingPolicy,
        *,
        window: int | None,
        gang: bool,
        clock: Callable[[], float],
        check: Callable[[ProgramRecord], StopReason | None],
    ) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 sequence (or None: no window), got {window}")
        self.policy, self.window, self.gang = policy, window, gang
        self._clock, self._check = clock, check
        self._heap: list[tuple[float, int, QueueEntry]] = []
        self._seq = itertools.count()
        self.in_flight = 0  # sequences dispatched and not yet released
        self.waiting = 0  # entries live in the heap
        self.decisions = 0
        self.mean_width = 1.0  # running mean of the sequences a dispatched gang holds

    def saturated(self) -> bool:
        """The window is full: a request sent now would wait for others to end."""
        return self.window is not None and self.in_flight >= self.window

    def acquire(self, record: ProgramRecord, n: int) -> asyncio.Future[None]:
        """A future resolved when ``record`` may send a request of ``n`` sequences."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = record.entry if self.gang else None
        if entry is None or not entry.live:
            now = self._clock()
            entry = QueueEntry(record, self.policy.key(record, now), now)
            record.entry = entry
            heapq.heappush(self._heap, (entry.key, next(self._seq), entry))
            self.waiting += 1
        entry.waiters.append((future, n))
        self.dispatch()
        return future

    def release(self, n: int) -> None:
        """A dispatched request of ``n`` sequences ended."""
        self.in_flight -= n
        self.dispatch()

    def discard(self, record: ProgramRecord) -> None:
        """The program ended: drop its waiting requests."""
        entry = record.entry
        if entry is not None and entry.live:
            entry.live = False
            self.waiting -= 1
            for future, _ in entry.waiters:
                future.cancel()
        record.entry = None

    def dispatch(self) -> None:
        """Grant waiting gangs in policy order while the window has room."""
        heap = self._heap
        while heap and (self.window is None or self.in_flight < self.window):
            entry = heapq.heappop(heap)[2]
            if not entry.live:
                continue
            entry.live = False
            self.waiting -= 1
            self.decisions += 1
            record = entry.record
            if record.entry is entry:
                record.entry = None
            record.queued_s += self._clock() - entry.since
            refused = self._check(record)
            if refused is None:
                width = sum(n for future, n in entry.waiters if not future.done())
                if width > 0:
                    record.width = width
                    self.mean_width += 0.05 * (width - self.mean_width)
            for future, n in entry.waiters:
                if future.done():  # its program was cancelled while waiting
                    continue
                if refused is not None:
                    future.set_exception(
                        BudgetExhausted(f"program {record.program_id}: {refused.value}", refused.value)
                    )
                    continue
                self.in_flight += n
                future.set_result(None)
            if refused is None and record.state is ProgramState.WAITING:
                record.state = ProgramState.RUNNING
