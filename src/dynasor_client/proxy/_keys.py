"""Client API keys and token budgets.

A :class:`KeyStore` holds the keys the proxy accepts, each with an optional token budget. Keys are
looked up by SHA-256 digest; logs and metrics name a key by its *fingerprint* (``key-`` + the
digest's first 8 hex digits), never by the key. The store also holds the keys themselves, only so
that the proxy can redact them from what it answers (:meth:`KeyStore.secrets`).

An *admin* key may read every key's spending in ``GET /dynasor/stats``; any other key sees only
its own there.

Keys file (``--api-keys-file``): one key per line, optionally followed by whitespace, its token
budget and/or the word ``admin``; blank lines and lines starting with ``#`` are ignored, a UTF-8
byte-order mark is skipped and a key listed twice is an error::

    # key                     budget (tokens; none: unlimited)
    sk-team-a-7f3e...         2000000
    sk-ci-0b19...
    sk-ops-88d1...            admin

A key's budget is held like the runtime's (docs/proxy.md, "Budgets and billing"): every upstream
request of the key's programs reserves its most tokens (``max_tokens x n`` plus its prompt's
estimate) against what the key has left before it is sent, shrunk (``max_tokens``, then ``n``) or
refused when they do not fit, and settles to what it used when it ends. A request is billed its
``usage.total_tokens`` (prompt plus everything generated, probes and extra samples included), or,
when it did not complete, what it streamed. A key with nothing left gets 429 ``insufficient_quota``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def fingerprint(key: str) -> str:
    """How logs name a key: ``key-`` + the first 8 hex digits of its SHA-256."""
    return f"key-{_digest(key)[:8]}"


@dataclass
class Budget:
    """Tokens spent against an optional limit."""

    limit: int | None = None
    spent: int = 0
    reserved: int = 0  # held by requests in flight

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.spent, 0)

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit

    def charge(self, tokens: int) -> None:
        self.spent += max(tokens, 0)

    # The runtime's Pool protocol (dynasor_client.budget.Pool).

    def room(self) -> int | None:
        return None if self.limit is None else self.limit - self.spent

    def held(self) -> int:
        return self.reserved

    def hold(self, tokens: int) -> None:
        self.reserved += tokens

    def spend(self, tokens: int) -> None:
        self.charge(tokens)


class Share:
    """One run's part of a budget: reservations and charges go through to the budget, and the
    tokens charged through it are counted (so that the run's final bill tops up only the rest)."""

    __slots__ = ("budget", "charged")

    def __init__(self, budget: Budget) -> None:
        self.budget, self.charged = budget, 0

    def room(self) -> int | None:
        return self.budget.room()

    def held(self) -> int:
        return self.budget.held()

    def hold(self, tokens: int) -> None:
        self.budget.hold(tokens)

    def spend(self, tokens: int) -> None:
        self.budget.charge(tokens)
        self.charged += max(tokens, 0)


@dataclass
class KeyAccount:
    """One accepted key: its fingerprint, budget and request count (never the key itself); an
    ``admin`` key may read every key's stats."""

    fingerprint: str
    budget: Budget
    requests: int = 0
    admin: bool = False
    #: The key's SHA-256 (hex): how a shared budget store names it (never the key itself).
    digest: str = dataclasses.field(default="", repr=False)


class KeyStore:
    """The API keys the proxy accepts (``{key: token budget or None}``, or just keys); ``admins``:
    the keys (among them or added, unlimited) that may read every key's stats."""

    def __init__(
        self,
        keys: Mapping[str, int | None] | Iterable[str],
        *,
        default_budget: int | None = None,
        admins: Iterable[str] = (),
    ):
        if default_budget is not None and default_budget < 1:
            raise ValueError("a token budget must be >= 1")
        pairs = keys.items() if isinstance(keys, Mapping) else ((k, None) for k in keys)
        self._accounts: dict[str, KeyAccount] = {}
        self._secrets: set[str] = set()
        admin_keys = set(admins)
        given = list(pairs)
        listed = {key for key, _ in given}
        given += [(key, None) for key in sorted(admin_keys - listed)]
        for key, budget in given:
            if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key):
                raise ValueError("an API key must be a non-empty string without whitespace")
            if budget is not None and budget < 1:
                raise ValueError(f"token budget of {fingerprint(key)} must be >= 1")
            limit = budget if budget is not None else default_budget
            digest = _digest(key)
            self._accounts[digest] = KeyAccount(
                fingerprint(key), Budget(limit), admin=key in admin_keys, digest=digest
            )
            self._secrets.add(key)
        if not self._accounts:
            raise ValueError("no API keys given")

    @classmethod
    def from_file(cls, path: str | Path, *, default_budget: int | None = None) -> KeyStore:
        """Keys from a keys file (module docs)."""
        keys: dict[str, int | None] = {}
        admins: list[str] = []
        first_line: dict[str, int] = {}
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a BOM is not part of the first key
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if fields[1:] and fields[-1] == "admin":
                fields.pop()
                admins.append(fields[0])
            if len(fields) > 2:
                raise ValueError(f"{path}:{number}: expected 'KEY [BUDGET] [admin]'")
            budget: int | None = None
            if len(fields) == 2:
                try:
                    budget = int(fields[1].replace("_", ""))
                except ValueError:
                    raise ValueError(f"{path}:{number}: the budget must be an integer") from None
            if fields[0] in first_line:
                raise ValueError(f"{path}:{number}: duplicate key (first on line {first_line[fields[0]]})")
            first_line[fields[0]] = number
            keys[fields[0]] = budget
        return cls(keys, default_budget=default_budget, admins=admins)

    def merged(self, other: KeyStore) -> KeyStore:
        """Both stores' keys in one (the other's budget wins for a key in both)."""
        store = object.__new__(KeyStore)
        store._accounts = {**self._accounts, **other._accounts}
        store._secrets = self._secrets | other._secrets
        return store

    def with_admins(self, admins: Iterable[str]) -> KeyStore:
        """This store with ``admins`` made admin keys (added, without a budget, when not listed)."""
        added = KeyStore([], admins=admins)
        store = object.__new__(KeyStore)
        store._accounts = dict(self._accounts)
        for digest, account in added._accounts.items():
            mine = store._accounts.get(digest)
            store._accounts[digest] = account if mine is None else dataclasses.replace(mine, admin=True)
        store._secrets = self._secrets | added._secrets
        return store

    def authenticate(self, key: str | None) -> KeyAccount | None:
        """The account of ``key``, or None when it is missing or not accepted."""
        if not key:
            return None
        return self._accounts.get(_digest(key))

    def accounts(self) -> list[KeyAccount]:
        return list(self._accounts.values())

    @property
    def has_admin(self) -> bool:
        return any(a.admin for a in self._accounts.values())

    def secrets(self) -> frozenset[str]:
        """The keys themselves: what the proxy redacts from every response."""
        return frozenset(self._secrets)

    def __len__(self) -> int:
        return len(self._accounts)

    def __repr__(self) -> str:
        return f"KeyStore({len(self)} keys)"


def presented_key(headers: Headers) -> str | None:
    """The key a client presented: ``Authorization: Bearer KEY``, else ``api-key`` or ``x-api-key``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("api-key") or headers.get("x-api-key") or None
