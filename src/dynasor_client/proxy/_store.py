"""Where key budgets and usage live: in this process (the default) or shared by replicas (Redis).

Every generation request of a key takes a :class:`Lease` on the key's budget before it runs, and
settles it when it ends (docs/proxy.md, "Budgets and billing"):

- :class:`MemoryStore` (the default): the lease is the key's own :class:`~._keys.Budget`; each
  upstream request of the run reserves its most tokens against it and charges what it used, as
  before there were stores. One process, one truth.
- :class:`~._redis.RedisStore` (``--redis URL``): the lease is a reservation in Redis, taken
  atomically (a Lua script) for the request's most tokens before it runs, refreshed while it runs
  and settled to what it was billed when it ends; the run's upstream requests reserve against
  the lease (a :class:`~._keys.Budget` of the granted tokens). A replica that dies stops refreshing
  its reservations: they expire after the TTL and their tokens are free again.

A request's most tokens (:func:`passthrough_reservation`, :func:`dynasor_reservation`): a
pass-through request ``n x max_tokens`` (:data:`~dynasor_client.budget.DEFAULT_RESERVATION` per
sequence without ``max_tokens``) plus its prompt's estimate; a dynasor request its
``dynasor.token_budget``, else :data:`PROGRAM_RESERVATION` tokens (its cap under a shared store).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..budget import DEFAULT_RESERVATION, MIN_USEFUL_TOKENS
from ._keys import Budget, KeyAccount

PROGRAM_RESERVATION = 16384
"""Tokens a dynasor request without ``dynasor.token_budget`` reserves from a shared store (and
then may spend at most)."""


@dataclass(eq=False)
class Lease:
    """One request's hold on its key's budget.

    Attributes:
        account: the key.
        pool: what the run's upstream requests reserve against and charge (None: nothing, an
            unlimited key under a shared store).
        tokens: tokens reserved in a shared store (0: none, or the in-memory store).
        id: the reservation's id in a shared store ("" for the in-memory store).
    """

    account: KeyAccount
    pool: Budget | None
    tokens: int = 0
    id: str = ""


@dataclass(frozen=True)
class Spending:
    """A key's spending as ``GET /dynasor/stats`` reports it (across replicas for a shared store)."""

    requests: int
    spent: int
    reserved: int
    budget: int | None

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "spent": self.spent, "budget": self.budget}


class BudgetStore(Protocol):
    """Key budgets and usage (module docs)."""

    #: Whether other replicas share it (then a reservation is a round trip, and may fail).
    shared: bool

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def reserve(self, account: KeyAccount, want: int, least: int) -> Lease:
        """A lease of up to ``want`` tokens (no fewer than ``least``; else 429
        ``insufficient_quota``); 503 ``budget_store_unavailable`` when the store cannot be reached."""
        ...

    def settle(self, lease: Lease, tokens: int, charged: int) -> None:
        """The request ended, billed ``tokens`` in all, of which ``charged`` went through the lease's
        pool already; its reservation is released (for a shared store: in the background)."""
        ...

    async def spending(self, accounts: Sequence[KeyAccount]) -> Mapping[str, Spending]:
        """Each account's spending, by fingerprint."""
        ...


class MemoryStore:
    """Key budgets in this process: each :class:`~._keys.KeyAccount`'s own budget (module docs)."""

    shared = False

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def reserve(self, account: KeyAccount, want: int, least: int) -> Lease:
        # Nothing taken here: each upstream request of the run reserves against the key's budget.
        return Lease(account, account.budget)

    def settle(self, lease: Lease, tokens: int, charged: int) -> None:
        # What the run's requests charged as they settled is already on the key: the rest (cached
        # prompt tokens, which the runtime's budget does not count) is added now.
        lease.account.budget.charge(tokens - charged)
        lease.account.requests += 1

    async def spending(self, accounts: Sequence[KeyAccount]) -> Mapping[str, Spending]:
        return self.view(accounts)

    @staticmethod
    def view(accounts: Sequence[KeyAccount]) -> dict[str, Spending]:
        """The accounts' spending as this process counted it."""
        return {
            a.fingerprint: Spending(a.requests, a.budget.spent, a.budget.reserved, a.budget.limit)
            for a in accounts
        }


def passthrough_reservation(body: Mapping[str, Any], prompt_tokens: int) -> tuple[int, int]:
    """``(want, least)`` of a pass-through request: ``n x max_tokens`` (or the default reservation
    per sequence) plus the prompt's estimate; at least the prompt and one useful sequence."""
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    most = body.get("max_completion_tokens", body.get("max_tokens"))
    per = most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else DEFAULT_RESERVATION
    return prompt_tokens + per * n, prompt_tokens + min(MIN_USEFUL_TOKENS, per)


def dynasor_reservation(token_budget: int | None) -> tuple[int, int]:
    """``(want, least)`` of a dynasor request: its token budget, else :data:`PROGRAM_RESERVATION`."""
    want = token_budget or PROGRAM_RESERVATION
    return want, min(MIN_USEFUL_TOKENS, want)
