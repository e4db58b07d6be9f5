"""Program states and the runtime's record of one program."""

from __future__ import annotations

import asyncio
import bisect
import collections
import enum
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..budget import Account
from ..program import StopReason

if TYPE_CHECKING:
    from ._scheduler import QueueEntry


class ProgramState(enum.Enum):
    """Where a program is in its life.

    WAITING: submitted, its first request not yet dispatched. RUNNING: it has had requests
    dispatched. STOPPING: stopped from outside (deadline, budget), its in-flight requests being
    aborted. DONE: it returned a result (also when rejected by admission control: see its stop
    reason). CANCELLED: cancelled before it finished. FAILED: it raised an error.
    """

    WAITING = "waiting"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (ProgramState.DONE, ProgramState.CANCELLED, ProgramState.FAILED)


class TokenHistory:
    """Total tokens of the last ``size`` finished programs, kept sorted with suffix sums: the mean,
    and the mean residual beyond a spend, are read in O(log n) on the scheduler's hot path (the
    work of keeping them is paid once per finished program)."""

    __slots__ = ("_recent", "_sorted", "_suffix")

    def __init__(self, size: int = 200) -> None:
        self._recent: collections.deque[int] = collections.deque(maxlen=size)
        self._sorted: list[int] = []
        self._suffix: list[int] = [0]  # _suffix[i] = sum(_sorted[i:])

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, total: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent[0])]
        self._recent.append(total)
        bisect.insort(self._sorted, total)
        self._suffix = list(itertools.accumulate(reversed(self._sorted), initial=0))[::-1]

    def mean(self) -> float | None:
        return self._suffix[0] / len(self._sorted) if self._sorted else None

    def mean_residual(self, spent: float) -> float | None:
        """Mean of ``total - spent`` over the totals above ``spent`` (None: no such total)."""
        first = bisect.bisect_right(self._sorted, spent)
        longer = len(self._sorted) - first
        return self._suffix[first] / longer - spent if longer else None


@dataclass(slots=True, eq=False)
class ProgramRecord:
    """What the runtime, its scheduler and policies know of one program (times on the runtime clock)."""

    program_id: str
    name: str | None
    arrival: float
    deadline: float | None  # absolute time, None: no deadline
    account: Account
    expected_tokens: float  # the prior for its total tokens (a hint, or the runtime's running mean)
    seconds_per_token: float  # the runtime's estimate of decoding speed per sequence
    width: float = 1.0  # sequences it runs at once: its latest gang's (a prior before its first)
    history: TokenHistory | None = None  # recently finished programs' totals (the runtime's, shared)
    state: ProgramState = ProgramState.WAITING
    stop_reason: StopReason | None = None
    finished_at: float | None = None
    queued_s: float = 0.0  # time its requests spent waiting in the scheduler's queue
    requests: int = 0
    entry: QueueEntry | None = None  # its gang in the queue, while one waits
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    cancel_requested: bool = False

    def remaining_tokens(self) -> float:
        """Estimated tokens still to generate, scaled down by how sure the program already is (a
        certain program is about to stop), bounded by its allowance.

        Before scaling: the mean residual work of the finished programs in :attr:`history` that spent
        more than this one has (a program still running after ``s`` tokens is, on average, one of
        the long ones: with early stopping, totals are far from normal); without such history, the
        prior minus what is spent; at least a tenth of the prior either way.
        """
        account = self.account
        spent = account.spent
        residual = None if self.history is None else self.history.mean_residual(spent)
        if residual is not None:
            left = max(residual, 0.1 * self.expected_tokens)
        else:
            left = max(self.expected_tokens - spent, 0.1 * self.expected_tokens)
        if account.steps:
            left *= 1.0 - min(max(account.certainty, 0.0), 1.0)
        if account.allowance is not None:
            left = min(left, max(account.allowance - account.spent, 0))
        return left

    def remaining_seconds(self) -> float:
        """Its estimated remaining work, in seconds of one sequence's decoding (the SRW key)."""
        return self.remaining_tokens() * self.seconds_per_token

    def time_to_finish(self) -> float:
        """Estimated seconds until it finishes once dispatched: its remaining tokens spread over the
        sequences it runs at once (its samples decode in parallel), at the per-sequence speed."""
        return self.remaining_tokens() / max(self.width, 1.0) * self.seconds_per_token

    def latency(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.arrival

    def met_deadline(self) -> bool | None:
        """Whether it finished in time with an answer of its own (rejected and cut programs miss)."""
        if self.deadline is None:
            return None
        if self.finished_at is None or self.state is not ProgramState.DONE:
            return False
        if self.stop_reason in (StopReason.REJECTED, StopReason.DEADLINE):
            return False
        return self.finished_at <= self.deadline
