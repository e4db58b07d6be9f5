"""One global token budget over many workers: a ledger hands it out in leases (module docs).

:class:`LeaseLedger` is the book of the global budget (one per batch, in one Ray actor: calls to it
are serial). :class:`LeasedBudget` is a worker's :class:`~dynasor_client.budget.BudgetManager`: its
programs reserve and spend against the leases it holds (its local ``total`` is the sum of its
leases), and it asks the ledger for more when what is left of them falls under half a lease or a
request does not fit. A request that does not fit waits for the answer (as it waits for other
requests' reservations to settle), so a lease never shrinks a request the global budget would
have let through; only when the ledger has nothing left to lease do requests shrink and programs
stop, as in one process.

Each message to the ledger (:class:`LeaseRequest`) also reports what the worker spent since its
last one and, once its finished programs freed more than twice what it keeps for its own (a
lease's worth, or one extension when larger), returns the excess; it may ask for freed allowance
(an extension) for an uncertain program whose own allowance ran out. So certaindex-driven
reallocation crosses workers: a program on one worker is extended with what programs on another
left over. A request's lease need is capped by what its own allowance lets it reserve, so a
program about to stop on its allowance does not take the global budget from other workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..budget import ALL_KINDS, DEFAULT_RESERVATION, Account, BudgetManager
from ..certainty import Hopeless
from ..program import TokenKind

log = logging.getLogger("dynasor_client.distributed")


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A worker's message to the ledger."""

    worker: str
    spent: int = 0  # tokens spent since its previous message
    freed: int = 0  # per-program allowance it returns to the global pool
    tokens: int = 0  # budget tokens it asks for (0: none)
    extension: int = 0  # freed allowance it asks for (0: none)
    leaving: bool = False  # its last message: what it holds and did not spend goes back


@dataclass(frozen=True, slots=True)
class Grant:
    """The ledger's answer: what it granted, and the global standing after it."""

    tokens: int
    extension: int
    spent: int  # tokens reported spent by every worker (and written off for lost ones)
    freed: int  # freed allowance left in the global pool
    exhausted: bool  # nothing is left to lease


@dataclass(slots=True)
class WorkerBook:
    """What the ledger knows of one worker."""

    granted: int = 0  # leased to it, less what it gave back
    spent: int = 0  # reported by it (or written off when it was lost)
    messages: int = 0
    lost: int = 0  # lease written off as spent when the worker died
    left: bool = False


@dataclass
class LeaseLedger:
    """The global token budget's book: ``total`` (None: no global budget, only freed allowance
    moves). Leases are never granted past ``total``: ``granted <= total`` at all times, so workers
    together cannot spend more than it (each within its leases, up to its prompt estimates' error)."""

    total: int | None
    granted: int = 0
    spent: int = 0
    freed: int = 0
    extended: int = 0  # freed allowance handed out as extensions
    messages: int = 0
    peak_granted: int = 0
    workers: dict[str, WorkerBook] = field(default_factory=dict)

    def lease(self, request: LeaseRequest) -> Grant:
        book = self.workers.setdefault(request.worker, WorkerBook())
        if book.left:
            raise ValueError(f"worker {request.worker!r} already left or was lost")
        self.messages += 1
        book.messages += 1
        book.spent += request.spent
        self.spent += request.spent
        self.freed += request.freed
        tokens = 0
        if request.tokens > 0 and self.total is not None:
            tokens = max(0, min(request.tokens, self.total - self.granted))
        extension = min(max(request.extension, 0), self.freed)
        self.freed -= extension
        self.extended += extension
        self.granted += tokens
        book.granted += tokens
        self.peak_granted = max(self.peak_granted, self.granted)
        if request.leaving:
            self._leave(book, written_off=False)
        return Grant(tokens, extension, self.spent, self.freed, self.exhausted)

    @property
    def exhausted(self) -> bool:
        return self.total is not None and self.granted >= self.total

    def lose(self, worker: str) -> int:
        """``worker`` died: what it held and did not report is written off as spent (it may have
        spent all of it); returns that."""
        book = self.workers.setdefault(worker, WorkerBook())
        if book.left:
            return 0
        return self._leave(book, written_off=True)

    def _leave(self, book: WorkerBook, *, written_off: bool) -> int:
        unused = max(0, book.granted - book.spent)
        if written_off:
            book.lost = unused
            book.spent += unused
            self.spent += unused
        else:
            book.granted -= unused
            self.granted -= unused
        book.left = True
        return unused

    def stats(self) -> dict[str, object]:
        return {
            "total": self.total,
            "granted": self.granted,
            "peak_granted": self.peak_granted,
            "spent": self.spent,
            "freed": self.freed,
            "extended": self.extended,
            "messages": self.messages,
            "lost": sum(b.lost for b in self.workers.values()),
            "workers": {name: _book(book) for name, book in self.workers.items()},
        }


def _book(book: WorkerBook) -> dict[str, int | bool]:
    return {"granted": book.granted, "spent": book.spent, "messages": book.messages, "lost": book.lost}


Lessor = Callable[[LeaseRequest], Awaitable[Grant]]
"""How a worker reaches the ledger (a Ray actor's method, or a ledger in the same process)."""


class LeasedBudget(BudgetManager):
    """A worker's budget manager under a :class:`LeaseLedger` (module docs).

    Args:
        lessor: sends a :class:`LeaseRequest` to the ledger.
        worker: this worker's name at the ledger.
        total: the global budget (None: none; only freed allowance is exchanged).
        lease_tokens: tokens asked for per lease: the most this worker holds unspent beyond what one
            request needs, and the most freed allowance it keeps for its own programs.
        per_program, count, low_water, ...: as :class:`~dynasor_client.budget.BudgetManager`;
            pressure (the surest programs stop first) follows the global spend as of the latest
            message plus this worker's own since.
    """

    def __init__(
        self,
        lessor: Lessor,
        *,
        worker: str,
        total: int | None,
        lease_tokens: int,
        per_program: int | None = None,
        count: Iterable[str] | None = None,
        low_water: float = 0.2,
        confident_at: float = 0.8,
        hopeless: Hopeless | None = None,
        extension: int | None = None,
        reallocate: bool = True,
        cached: bool = False,
    ) -> None:
        if lease_tokens < 1:
            raise ValueError(f"lease_tokens must be >= 1, got {lease_tokens}")
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 tokens, got {total}")
        super().__init__(
            None, per_program, count=ALL_KINDS if count is None else count, low_water=low_water,
            confident_at=confident_at, hopeless=hopeless, extension=extension, reallocate=reallocate,
            cached=cached,
        )  # fmt: skip
        self.global_total = total
        self.total = None if total is None else 0  # the leases held so far
        self.lease_tokens = lease_tokens
        self.worker = worker
        self._lessor = lessor
        self._pending: asyncio.Task[None] | None = None
        self.reported = 0  # of self.spent, what the ledger was told
        self.global_spent = 0
        self.global_freed = 0
        self.exhausted = False
        self.messages = 0
        self.waits = 0  # requests that waited for the ledger's answer
        self.received = 0  # freed allowance received from the ledger

    # ---------------------------------------------------------------- the ledger

    def _ask(self, tokens: int = 0, extension: int = 0, *, leaving: bool = False) -> LeaseRequest | None:
        """Send a message now (one at a time: None while one is on its way)."""
        if self._pending is not None:
            return None
        keep = 0 if leaving else self._keep()
        freed = max(0, self.freed - keep) if self.reallocate and (leaving or self.freed > 2 * keep) else 0
        self.freed -= freed
        request = LeaseRequest(self.worker, self.spent - self.reported, freed, tokens, extension, leaving)
        self.reported = self.spent
        self.messages += 1
        self._pending = asyncio.get_running_loop().create_task(self._send(request))
        return request

    async def _send(self, request: LeaseRequest) -> None:
        try:
            grant = await self._lessor(request)
        except Exception as exc:  # the ledger is gone: what is held is all there is
            log.warning(
                "worker %s: the budget ledger cannot be reached (%s): no more leases", self.worker, exc
            )
            self.exhausted, self.global_freed = True, 0
        else:
            if self.total is not None:
                self.total += grant.tokens
            self.freed += grant.extension
            self.received += grant.extension
            self.global_spent, self.global_freed, self.exhausted = grant.spent, grant.freed, grant.exhausted
        finally:
            self._pending = None
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def start(self) -> None:
        """Take the first lease before the first request needs it."""
        if self.total is not None:
            self._ask(tokens=self.lease_tokens)
            await self.drain()

    async def drain(self) -> None:
        """Until no message is on its way."""
        while self._pending is not None:
            await asyncio.shield(self._pending)

    async def leave(self) -> None:
        """The worker is done: report what it spent, give back freed allowance and unspent leases."""
        await self.drain()
        self._ask(leaving=True)
        await self.drain()

    # ---------------------------------------------------------------- the manager's decisions

    def _room(self) -> int:
        assert self.total is not None
        return self.total - self.spent - self.reserved

    def _eligible(self, account: Account) -> bool:
        return account.certainty < self.confident_at and not self.hopeless(account)

    def fit(
        self,
        account: Account,
        kind: TokenKind,
        n: int,
        max_tokens: int | None,
        prompt_tokens: int,
        *,
        wait: bool = False,
    ) -> tuple[int, int | None, int] | None:
        counted = kind.value in self.count
        need = (prompt_tokens if "prompt" in self.count else 0) + (
            (max_tokens or DEFAULT_RESERVATION) * n if counted else 0
        )
        own = self._own_free(account)  # the request shrinks to that anyway: no lease beyond it
        if own is not None:
            if own <= 0 and self.freed > 0 and account.allowance is not None and self._eligible(account):
                own += min(self.freed, self._step(account))  # what extending it here will add
            need = min(need, max(own, 0))
        if wait and self._short(account, need):
            self.waits += 1
            return None  # the ledger's answer wakes it (settled())
        return super().fit(account, kind, n, max_tokens, prompt_tokens, wait=wait)

    @staticmethod
    def _own_free(account: Account) -> int | None:
        """What ``account`` may still reserve by its own allowance and pools (None: no limit)."""
        left = None if account.allowance is None else account.allowance - account.spent - account.reserved
        for pool in account.pools:
            room = pool.room()
            if room is not None:
                room -= pool.held()
                left = room if left is None else min(left, room)
        return left

    def _short(self, account: Account, need: int) -> bool:
        """Whether a request of ``need`` tokens must wait for the ledger (a message is sent or on
        its way); sends a lease request ahead of time when the leases run low."""
        if self.total is not None and not self.exhausted:
            room = self._room()
            if room < need:
                self._ask(tokens=max(self.lease_tokens, need - room))
                return True
            if room - need < self.lease_tokens // 2:
                self._ask(tokens=self.lease_tokens)  # ahead of time: nobody waits for it
        if self._extensible(account):
            self._ask(extension=self._step(account))
            return True
        return False

    def _extensible(self, account: Account) -> bool:
        """Its allowance is spent, this worker has no freed allowance, the ledger has some."""
        if account.allowance is None or self.freed > 0 or self.global_freed <= 0:
            return False
        own = account.allowance - account.spent - account.reserved
        return own <= 0 and self._eligible(account)

    def _keep(self) -> int:
        """Freed allowance kept for this worker's own programs: a lease's worth, or one extension."""
        return max(self.lease_tokens, self.extension or (self.per_program or 0) // 2)

    def _step(self, account: Account) -> int:
        return self.extension or max(1, (self.per_program or account.allowance or 1) // 2)

    def _extend(self, account: Account) -> bool:
        if super()._extend(account):
            return True
        if account.allowance is not None and self.global_freed > 0 and self._eligible(account):
            self._ask(extension=self._step(account))
            return True  # on its way: the request waits for it in fit()
        return False

    def hold(self, account: Account, tokens: int) -> int:
        if self.total is not None and not self.exhausted and self._room() < tokens + self.lease_tokens // 2:
            self._ask(tokens=max(self.lease_tokens, tokens))  # a bare slot cannot wait: ahead of time
        return super().hold(account, tokens)

    def close(self, account: Account) -> None:
        super().close(account)
        if self.reallocate and self.freed > 2 * self._keep():
            self._ask()  # give the excess back for other workers' uncertain programs

    def remaining(self) -> int | None:
        if self.global_total is None:
            return None
        assert self.total is not None
        own = self.total - self.spent
        if self.exhausted:
            return own
        return max(own, self.global_total - self.global_spent - (self.spent - self.reported))

    def pressure(self) -> float:
        if self.global_total is None:
            return 0.0
        spent = self.global_spent + (self.spent - self.reported)
        if self.low_water == 0:
            return 0.0 if spent < self.global_total else 1.0
        left = (self.global_total - spent) / (self.low_water * self.global_total)
        return min(1.0, max(0.0, 1.0 - left))
