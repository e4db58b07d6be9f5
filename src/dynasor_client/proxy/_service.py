"""The proxy's state: upstream clients, the runtime every request runs in, keys, budgets, counters."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.datastructures import Headers

from .._exceptions import BudgetExhausted, EndpointError, ProgramCancelled, RuntimeClosed
from .._log import get_logger
from ..algorithms import JudgeRewardModel, PoolingRewardModel, RewardModel
from ..budget import BudgetManager
from ..endpoints import Endpoint, RetryPolicy
from ..runtime import Runtime
from ._config import ProxyConfig
from ._errors import ProxyError, Redactor, endpoint_error, redact, redact_logs, transport_error
from ._keys import Budget, KeyAccount, presented_key
from ._options import DynasorOptions
from ._pool import direct, upstream_transport
from ._responses import billed_tokens
from ._run import Run
from ._store import BudgetStore, Lease, MemoryStore, Spending

log = get_logger("dynasor_client.proxy")
_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

#: The only client headers forwarded upstream (pass-through and ``/v1/models``); every other one
#: (credentials, cookies, hop-by-hop, vendor and SDK headers, ``X-Dynasor-*``) stays at the proxy.
FORWARDED_HEADERS = frozenset(
    {"accept", "user-agent", "x-request-id", "traceparent", "tracestate", "baggage", "openai-beta"}
)
#: Forwarded only with the client's own key upstream (``upstream_auth="forward"``): with the
#: proxy's key they would bill or reach another organisation or project of the proxy's account.
FORWARDED_WITH_CLIENT_KEY = frozenset({"openai-organization", "openai-project"})


@dataclass
class Counters:
    """What ``GET /dynasor/stats`` reports."""

    requests: int = 0
    passthrough: int = 0
    programs: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    tokens: int = 0
    saved_tokens: int = 0


class ProxyService:
    """Everything the routes share; :meth:`start` before serving, :meth:`aclose` after."""

    def __init__(self, config: ProxyConfig, *, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.keys = config.keys
        self.budget = Budget(config.token_budget)
        #: Where key budgets and usage live (in this process, or shared through Redis).
        self.store: BudgetStore = _store(config)
        self.counters = Counters()
        self.endpoint = Endpoint(
            config.upstream,
            model=config.model,
            api_key=config.upstream_api_key or "EMPTY",
            timeout=config.timeout_s,
            retry=retry,
            max_in_flight=config.max_in_flight,
            capabilities=config.capabilities or "detect",
            default_headers=dict(config.extra_headers),
            name=config.upstream_display,
        )
        self.http = httpx.AsyncClient(
            base_url=config.upstream + "/",
            timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0)),
            # The lean HTTP/1.1 transport of ._pool, keeping a window of connections alive. No
            # Nagle: a request must not wait for the upstream's delayed ACK (~40 ms on Linux).
            transport=(transport := upstream_transport(config.max_in_flight, socket_options=[_NODELAY])),
        )
        #: Pass-through requests go straight through ``http``'s transport where they can (``._pool``).
        self.direct = direct(self.http, transport)
        # Budgets count what requests are billed (total_tokens: cached prompt tokens included),
        # and a request's dynasor.token_budget is its cap, never extended by what earlier requests
        # left unspent (no reallocation: other clients' tokens).
        budget = BudgetManager(config.token_budget, reallocate=False, cached=True)
        self.runtime = Runtime(self.endpoint, budget=budget, window=config.max_in_flight)
        self._rewards: dict[str, RewardModel] = {}
        self._reward_endpoint: Endpoint | None = None
        self._runs: set[Run] = set()
        self._unredact_logs: Callable[[], None] = lambda: None
        self.started = time.time()
        self.secrets = [*config.secrets(), *(config.keys.secrets() if config.keys is not None else ())]
        #: What every response byte goes through (``RedactingMiddleware``).
        self.redactor = Redactor(self.secrets)
        if self.redactor.too_short:
            log.warning(
                "%d of the proxy's secrets are shorter than %d characters: they are not redacted "
                "from responses (use longer keys)",
                self.redactor.too_short,
                Redactor.MIN_LENGTH,
            )

    @property
    def upstream_display(self) -> str:
        """The upstream URL as clients may see it (credentials masked)."""
        return self.config.upstream_display

    async def start(self) -> None:
        # Log records carry upstream error text, which may echo the proxy's key: redacted from now.
        self._unredact_logs = redact_logs(self.redactor)
        await self.store.start()
        await self.runtime.__aenter__()

    async def aclose(self) -> None:
        try:
            await self._close()
        finally:
            self._unredact_logs()

    async def _close(self) -> None:
        for run in list(self._runs):
            run.cancel()
        self.runtime.cancel_all()
        await self.runtime.__aexit__(None, None, None)
        await self.store.aclose()  # after the runs: their settlements go out first
        await self.http.aclose()
        await self.endpoint.aclose()
        if self._reward_endpoint is not None:
            await self._reward_endpoint.aclose()

    # ------------------------------------------------------------------ keys and budgets

    def authenticate(self, headers: Headers) -> KeyAccount | None:
        """The client's key account (None when the proxy takes no keys); 401 for a wrong key."""
        if self.keys is None:
            return None
        key = presented_key(headers)
        if key is None:
            raise ProxyError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (the openai "
                "SDK's api_key).",
                status=401,
                code="missing_api_key",
            )
        account = self.keys.authenticate(key)
        if account is None:
            raise ProxyError("Incorrect API key provided.", status=401, code="invalid_api_key")
        return account

    def check_budget(self, account: KeyAccount | None) -> None:
        """429 ``insufficient_quota`` once the key's or the proxy's token budget is spent."""
        if account is not None and account.budget.exhausted:
            raise ProxyError(
                f"API key {account.fingerprint} has spent its token budget "
                f"({account.budget.spent} of {account.budget.limit} tokens).",
                status=429,
                type="insufficient_quota",
                code="insufficient_quota",
            )
        if self.budget.exhausted:
            raise ProxyError(
                f"the proxy's token budget is spent ({self.budget.spent} of {self.budget.limit} tokens).",
                status=429,
                type="insufficient_quota",
                code="insufficient_quota",
            )

    def check_options(self, options: DynasorOptions) -> None:
        """400 for a technique that asks for more than the proxy's limits (docs/proxy.md,
        "Limits"): more samples than ``max_samples`` (``dynasor.n``, ``dynasor.width``), or a
        chunk or step above ``max_tokens``."""
        settings, config = options.settings, self.config
        if settings is None:
            return
        for name in ("n", "width"):
            value = getattr(settings, name, None)
            if isinstance(value, int) and value > config.max_samples:
                raise ProxyError(
                    f"dynasor.{name} is at most {config.max_samples} on this proxy (--max-samples), "
                    f"got {value}",
                    param=f"dynasor.{name}",
                    code="too_many_samples",
                )
        if config.max_tokens is None:
            return
        for name in ("chunk_tokens", "step_tokens"):
            value = getattr(settings, name, None)
            if isinstance(value, int) and value > config.max_tokens:
                raise ProxyError(
                    f"dynasor.{name} is at most {config.max_tokens} on this proxy (--max-tokens), "
                    f"got {value}",
                    param=f"dynasor.{name}",
                    code="max_tokens_too_large",
                )

    async def lease(self, account: KeyAccount | None, wants: tuple[int, int] | None) -> Lease | None:
        """The request's hold on its key's budget (None: no key); ``wants``: its ``(most, least)``
        tokens (:mod:`._store`; only a shared store reserves them before the request runs)."""
        if account is None:
            return None
        want, least = wants if wants is not None else (0, 0)
        return await self.store.reserve(account, want, least)

    def token_cap(self, lease: Lease | None, requested: int | None) -> int | None:
        """The most tokens a new program may spend: its own budget, the key's (or its lease's) and
        the proxy's left."""
        caps = [c for c in (requested, self.budget.remaining) if c is not None]
        if lease is not None and lease.pool is not None and lease.pool.remaining is not None:
            caps.append(lease.pool.remaining)
        return max(min(caps), 1) if caps else None

    def _accounts(self) -> list[KeyAccount]:
        return self.keys.accounts() if self.keys is not None else []

    # ------------------------------------------------------------------ runs

    def track(self, run: Run) -> None:
        self._runs.add(run)
        self.counters.running += 1

    def ended(self, run: Run, lease: Lease | None, what: str) -> None:
        """Charge a finished (failed, cancelled) run's tokens to its key and the proxy budget."""
        self._runs.discard(run)
        self.counters.running -= 1
        tokens = billed_tokens(run.context.usage) if run.context is not None else 0
        self.budget.charge(tokens)
        self.counters.tokens += tokens
        if lease is not None:
            self.store.settle(lease, tokens, run.share.charged if run.share is not None else 0)
        final = run.state.get("final")
        if final is not None:
            self.counters.saved_tokens += final.saved
        if run.task.cancelled() or isinstance(run.task.exception(), ProgramCancelled):
            outcome = "cancelled"
            self.counters.cancelled += 1
        elif run.task.exception() is not None:
            outcome = f"failed ({type(run.task.exception()).__name__})"
            self.counters.failed += 1
        else:
            outcome = "ok"
        log.info(
            "%s %s: %d tokens in %.3f s (key %s)",
            what,
            outcome,
            tokens,
            time.monotonic() - run.started,
            lease.account.fingerprint if lease is not None else "-",
        )

    # ------------------------------------------------------------------ upstream

    def upstream_headers(self, client: Headers) -> tuple[dict[str, str], bool]:
        """Headers for a pass-through request and whether they carry the proxy's own key."""
        key, own = None, True
        if self.config.upstream_auth == "forward":
            key = presented_key(client)
            own = key is None
        allowed = FORWARDED_HEADERS if own else FORWARDED_HEADERS | FORWARDED_WITH_CLIENT_KEY
        headers = {k: v for k, v in client.items() if k.lower() in allowed}
        headers["content-type"] = "application/json"
        key = key or self.config.upstream_api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(self.config.extra_headers)
        return headers, own

    def reward_model(self, choice: str | None = None) -> RewardModel:
        """The reward model a request chose (``dynasor.reward``: ``"judge"`` or ``"pooling"``, on the
        upstream), or the proxy's own (None: ``ProxyConfig.reward``, which may also be the API root
        of a separate ``/pooling`` server); each made on first use."""
        choice = choice or self.config.reward
        model = self._rewards.get(choice)
        if model is None:
            if choice == "judge":
                model = JudgeRewardModel(self.endpoint)
            elif choice == "pooling":
                model = PoolingRewardModel(self.endpoint)
            else:
                self._reward_endpoint = Endpoint(
                    choice, api_key=self.config.upstream_api_key or "EMPTY", timeout=self.config.timeout_s
                )
                model = PoolingRewardModel(self._reward_endpoint)
            self._rewards[choice] = model
        return model

    def error(self, exc: BaseException) -> ProxyError:
        """The HTTP error for anything a run raised (see :mod:`._errors`)."""
        if isinstance(exc, ProxyError):
            return exc
        if isinstance(exc, EndpointError):
            return endpoint_error(exc, self.upstream_display)
        if isinstance(exc, httpx.HTTPError):
            return transport_error(exc, self.upstream_display)
        if isinstance(exc, BudgetExhausted):
            return ProxyError(str(exc), status=429, type="insufficient_quota", code="insufficient_quota")
        if isinstance(exc, asyncio.CancelledError | ProgramCancelled | RuntimeClosed):
            return ProxyError("the request was cancelled: the proxy is shutting down", status=503)
        log.error("internal error of the proxy: %s", self.redact(repr(exc)), exc_info=exc)
        return ProxyError(f"internal error of the proxy: {type(exc).__name__}", status=500)

    def redact(self, text: str) -> str:
        """``text`` without the proxy's secrets (logs)."""
        return redact(text, self.secrets)

    async def spending(self, viewer: KeyAccount | None) -> Mapping[str, Spending]:
        """The key spending ``viewer`` may read (:meth:`stats`), from the store: every replica's
        under a shared store."""
        if viewer is not None and not viewer.admin:
            return await self.store.spending([viewer])
        return await self.store.spending(self._accounts())

    def stats(
        self, viewer: KeyAccount | None = None, spending: Mapping[str, Spending] | None = None
    ) -> dict[str, Any]:
        """What ``GET /dynasor/stats`` answers ``viewer``: everything (no keys configured, an admin
        key, or None: the proxy itself), or a key's own spending only (any other key). ``spending``:
        :meth:`spending` (default: this process's view of the keys)."""
        if spending is None:
            accounts = [viewer] if viewer is not None and not viewer.admin else self._accounts()
            spending = MemoryStore.view(accounts)
        if viewer is not None and not viewer.admin:
            return {"keys": {fp: s.as_json() for fp, s in spending.items()}}
        c = self.counters
        keys = {fp: s.as_json() for fp, s in spending.items()}
        return {
            "upstream": self.upstream_display,
            "uptime_s": round(time.time() - self.started, 3),
            "requests": c.requests,
            "passthrough": c.passthrough,
            "programs": dict(c.programs),
            "refused": c.refused,
            "failed": c.failed,
            "cancelled": c.cancelled,
            "running": c.running,
            "tokens": c.tokens,
            "saved_tokens": c.saved_tokens,
            "budget": {"spent": self.budget.spent, "limit": self.budget.limit},
            "keys": keys,
        }


def _store(config: ProxyConfig) -> BudgetStore:
    if config.redis is None:
        return MemoryStore()
    try:
        from ._redis import RedisStore
    except ImportError as exc:
        raise ValueError(f"--redis needs redis-py: pip install 'dynasor-client[redis]' ({exc})") from None
    accounts = config.keys.accounts() if config.keys is not None else ()
    return RedisStore(config.redis, ttl_s=config.reservation_ttl_s, accounts=accounts)
