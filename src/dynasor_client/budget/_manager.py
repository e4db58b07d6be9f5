"""One global token budget, per-program allowances, reallocation and hopeless cuts (module docs)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..certainty import Hopeless
from ..endpoints import Usage
from ..program import StopReason, TokenKind

ALL_KINDS = frozenset({"prompt", "generated", "probe", "reward"})
"""Token kinds counted by default: uncached prompt, generated, probe and reward tokens."""


@dataclass(slots=True)
class Account:
    """One program's standing: what it may spend, what it spent, and how sure it is."""

    allowance: int | None  # None: no per-program cap
    spent: int = 0
    certainty: float = 0.0
    steps: int = 0
    extended: int = 0  # allowance received from programs that finished early


class BudgetManager:
    """The token budget of a runtime.

    Args:
        total: tokens all programs together may spend (None: unlimited). Never exceeded by more
            than the requests already in flight: no request is dispatched once it is spent.
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
        self.extension, self.reallocate = extension, reallocate
        self.spent = 0
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
            tokens += usage.prompt_tokens - (usage.cached_prompt_tokens or 0)
        return tokens

    def charge(self, account: Account, kind: TokenKind, usage: Usage) -> int:
        tokens = self.counted(kind, usage)
        account.spent += tokens
        self.spent += tokens
        return tokens

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
