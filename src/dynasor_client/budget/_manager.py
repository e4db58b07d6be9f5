"""One global token budget, per-program allowances, reallocation and hopeless cuts (module docs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..certainty import Hopeless
from ..endpoints import Usage, prompt_estimate
from ..program import DEFAULT_RESERVATION, MIN_USEFUL_TOKENS, StopReason, TokenKind, fit_request

__all__ = [
    "ALL_KINDS",
    "DEFAULT_RESERVATION",
    "MIN_USEFUL_TOKENS",
    "Account",
    "BudgetManager",
    "Pool",
    "prompt_estimate",
]

ALL_KINDS = frozenset({"prompt", "generated", "probe", "reward"})
"""Token kinds counted by default: uncached prompt, generated, probe and reward tokens."""


class Pool(Protocol):
    """A budget beyond the runtime's (a proxy key's): a program's requests reserve and charge it too."""

    def room(self) -> int | None:
        """Tokens not spent yet (None: no limit)."""
        ...

    def held(self) -> int:
        """Tokens reserved by requests in flight."""
        ...

    def hold(self, tokens: int) -> None:
        """Reserve ``tokens`` (negative: release)."""
        ...

    def spend(self, tokens: int) -> None:
        """Charge ``tokens`` (a response's ``total_tokens``: its prompt, cached or not, and what it
        generated)."""
        ...


@dataclass(slots=True)
class Account:
    """One program's standing: what it may spend, what it spent, and how sure it is."""

    allowance: int | None  # None: no per-program cap
    spent: int = 0
    certainty: float = 0.0
    steps: int = 0
    extended: int = 0  # allowance received from programs that finished early
    reserved: int = 0  # held by its requests in flight (released when they settle)
    pools: list[Pool] = field(default_factory=list)  # budgets beyond the runtime's (a proxy key)


class BudgetManager:
    """The token budget of a runtime.

    Args:
        total: tokens all programs together may spend (None: unlimited). Each request reserves
            its most tokens (``max_tokens x n`` plus its prompt's estimate) before it is sent and
            is shrunk or refused when they do not fit; it settles to what it used when it ends
            (:meth:`fit`, :meth:`settle`); chunks, probes, steps and reward calls too (a program
            context's ``request_slot`` with their ``max_tokens``). Overshoot is bounded by the
            prompt estimates' error of the requests in flight (scaled by what responses showed
            it to be: :class:`~dynasor_client.program.PromptScale`), and by requests sent through a
            bare request slot (no ``max_tokens`` given) beyond what was left.
        per_program: each program's allowance (None: none; a program's own ``token_cap`` wins).
        count: which kinds count: ``"prompt"`` (uncached prompt tokens), ``"generated"``,
            ``"probe"``, ``"reward"``.
        low_water: the fraction of ``total`` below which the budget is under pressure: then a
            program stops when its certaindex reaches ``1 - pressure`` (the surest stop first), and
            hopeless programs are cut.
        confident_at: a program at least this sure gets no extension of its allowance.
        hopeless: the rule that says a program is hopeless, from its steps (reports) and its
            latest certaindex (default ``Hopeless(after=4, below=0.3)``); cut under pressure.
        extension: tokens granted per extension from the freed pool (default: half an allowance).
        reallocate: give allowance left by finished programs to uncertain ones.
        cached: count cached prompt tokens too (as the proxy bills them: ``total_tokens``);
            default: only the prompt tokens the server did not have cached.
    """

    def __init__(
        self,
        total: int | None = None,
        per_program: int | None = None,
        *,
        count: Iterable[str] = ALL_KINDS,
        low_water: float = 0.2,
        confident_at: float = 0.8,
        hopeless: Hopeless | None = None,
        extension: int | None = None,
        reallocate: bool = True,
        cached: bool = False,
    ) -> None:
        if total is not None and total < 1:
            raise ValueError(f"total must be >= 1 token, got {total}")
        if per_program is not None and per_program < 1:
            raise ValueError(f"per_program must be >= 1 token, got {per_program}")
        if not 0 <= low_water < 1:
            raise ValueError(f"low_water must be in [0, 1), got {low_water}")
        self.count = frozenset(count)
        if unknown := self.count - ALL_KINDS:
            raise ValueError(f"unknown token kinds {sorted(unknown)}: choose from {sorted(ALL_KINDS)}")
        self.total, self.per_program = total, per_program
        self.low_water, self.confident_at = low_water, confident_at
        self.hopeless_rule = hopeless or Hopeless(after=4, below=0.3)
        self.extension, self.reallocate, self.cached = extension, reallocate, cached
        self.spent = 0
        self.reserved = 0  # held by requests in flight
        self._waiters: list[asyncio.Future[None]] = []  # requests waiting for reservations to settle
        self.freed = 0  # allowance returned by programs that finished under it

    def __repr__(self) -> str:
        return f"BudgetManager(total={self.total}, per_program={self.per_program}, spent={self.spent})"

    # ---------------------------------------------------------------- accounts

    def open(self, cap: int | None = None) -> Account:
        """A new program's account; ``cap`` overrides the per-program allowance."""
        if cap is not None and cap < 1:
            raise ValueError(f"token_cap must be >= 1, got {cap}")
        return Account(cap if cap is not None else self.per_program)

    def counted(self, kind: TokenKind, usage: Usage) -> int:
        """The tokens of one response that count against the budget."""
        tokens = usage.completion_tokens if kind.value in self.count else 0
        if "prompt" in self.count:
            tokens += usage.prompt_tokens - (0 if self.cached else usage.cached_prompt_tokens or 0)
        return tokens

    def charge(self, account: Account, kind: TokenKind, usage: Usage) -> int:
        tokens = self.counted(kind, usage)
        account.spent += tokens
        self.spent += tokens
        if account.pools:
            billed = usage.prompt_tokens + usage.completion_tokens  # a pool bills what was processed
            for pool in account.pools:
                pool.spend(billed)
        return tokens

    # ---------------------------------------------------------------- reservations

    def limited(self, account: Account) -> bool:
        """Whether any budget applies to ``account`` (else nothing is reserved: the fast path)."""
        return self.total is not None or account.allowance is not None or bool(account.pools)

    def free(self, account: Account, *, settled: bool = False) -> int | None:
        """Tokens ``account`` may still reserve: the least of the global budget, its allowance and
        its pools, less what is spent and reserved (``settled``: as if every reservation in flight
        settled to nothing); None: no limit."""
        left: int | None = None
        if self.total is not None:
            left = self.total - self.spent - (0 if settled else self.reserved)
        if account.allowance is not None:
            own = account.allowance - account.spent - (0 if settled else account.reserved)
            left = own if left is None else min(left, own)
        for pool in account.pools:
            room = pool.room()
            if room is not None:
                room -= 0 if settled else pool.held()
                left = room if left is None else min(left, room)
        return left

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
        """Reserve a request of ``n`` sequences of at most ``max_tokens`` (None: the server's
        default, reserved as :data:`DEFAULT_RESERVATION`) after a prompt of about
        ``prompt_tokens``: ``(n, max_tokens, held)`` to send it with, shrunk to what is left
        (``max_tokens`` first, then ``n``); raises :class:`BudgetExhausted` when not even
        :data:`MIN_USEFUL_TOKENS` per sequence fit. :meth:`release` ``held`` when it ends.

        With ``wait``: None instead of shrinking or refusing while other requests' reservations
        stand in the way (wait for :meth:`settled`, then ask again)."""
        free = self.free(account)
        if free is None:
            return n, max_tokens, 0
        if free <= 0 and account.allowance is not None and self._extend(account):
            free = self.free(account)
            assert free is not None
        settled = self.free(account, settled=True) if wait else None
        shape = fit_request(
            free,
            settled,
            n,
            max_tokens,
            prompt_tokens if "prompt" in self.count else 0,
            kind.value in self.count,
        )
        if shape is None:
            return None
        return self._hold(account, shape[2], shape[0], shape[1])

    async def settled(self) -> None:
        """Wait until a reservation is released."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def hold(self, account: Account, tokens: int) -> int:
        """Reserve up to ``tokens`` for a request the runtime cannot shrink (a bare request slot):
        what is left when less; returns what was held."""
        free = self.free(account)
        if free is None:
            return 0
        return self._hold(account, max(0, min(tokens, free)), 1, None)[2]

    def _hold(
        self, account: Account, tokens: int, n: int, max_tokens: int | None
    ) -> tuple[int, int | None, int]:
        self.reserved += tokens
        account.reserved += tokens
        for pool in account.pools:
            pool.hold(tokens)
        return n, max_tokens, tokens

    def release(self, account: Account, tokens: int) -> None:
        """Give back a reservation (the request ended: its tokens are charged instead, in the same
        step of the event loop); wakes the requests waiting in :meth:`settled`."""
        if tokens:
            self.reserved -= tokens
            account.reserved -= tokens
            for pool in account.pools:
                pool.hold(-tokens)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def close(self, account: Account) -> None:
        """A program finished: what it did not spend of its allowance goes to the freed pool."""
        if self.reallocate and account.allowance is not None:
            self.freed += max(0, account.allowance - account.spent)
        account.allowance = account.spent  # nothing more, and nothing returned twice

    # ---------------------------------------------------------------- decisions

    def remaining(self) -> int | None:
        return None if self.total is None else self.total - self.spent

    def pressure(self) -> float:
        """0 while the budget is above its low-water mark, rising to 1 when it is spent."""
        if self.total is None or self.low_water == 0:
            return 0.0 if self.total is None or self.spent < self.total else 1.0
        left = (self.total - self.spent) / (self.low_water * self.total)
        return min(1.0, max(0.0, 1.0 - left))

    def hopeless(self, account: Account) -> bool:
        return self.hopeless_rule.cuts(account.steps, account.certainty)

    def tokens_left(self, account: Account) -> int | None:
        left = [x for x in (self.remaining(), _own_left(account)) if x is not None]
        return min(left) if left else None

    def may_dispatch(self, account: Account) -> StopReason | None:
        """The hard check before a request is sent: None to send it, else why not."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return StopReason.BUDGET
        own = _own_left(account)
        if own is not None and own <= 0 and not self._extend(account):
            return StopReason.HOPELESS if self.hopeless(account) else StopReason.BUDGET
        for pool in account.pools:
            room = pool.room()
            if room is not None and room <= 0:
                return StopReason.BUDGET  # a proxy key's budget is spent
        return None

    def stop_reason(self, account: Account) -> StopReason | None:
        """The soft check between steps: should this program stop and return its answer now?"""
        if (hard := self.may_dispatch(account)) is not None:
            return hard
        pressure = self.pressure()
        if pressure > 0:
            if self.hopeless(account):
                return StopReason.HOPELESS
            if account.steps > 0 and account.certainty >= 1.0 - pressure:
                return StopReason.BUDGET  # the surest programs give way first
        return None

    def _extend(self, account: Account) -> bool:
        """More allowance from the freed pool for an uncertain, not hopeless program."""
        if self.freed <= 0 or account.certainty >= self.confident_at or self.hopeless(account):
            return False
        step = self.extension or max(1, (self.per_program or account.allowance or 1) // 2)
        grant = min(self.freed, step)
        self.freed -= grant
        account.extended += grant
        assert account.allowance is not None
        account.allowance += grant
        return True


def _own_left(account: Account) -> int | None:
    return None if account.allowance is None else account.allowance - account.spent
