"""What a worker needs to run programs as the caller's runtime would: its endpoint, runtime options
and budget settings, taken from that runtime as plain, picklable data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..budget import BudgetManager
from ..certainty import Hopeless
from ..endpoints import Capabilities, Endpoint, EndpointPool, RetryPolicy
from ..runtime import Runtime, SchedulingPolicy
from ._leases import LeasedBudget, Lessor

EndpointFactory = Callable[[], Endpoint | EndpointPool]
"""Builds the endpoint in a worker (a module-level function, or a lambda: Ray pickles closures)."""


@dataclass(frozen=True)
class EndpointRecipe:
    """An :class:`Endpoint` rebuilt in a worker: its URL and the public settings of the caller's
    one (model and capabilities as the caller detected them, so workers do not probe again). The
    API key comes from the worker's ``OPENAI_API_KEY``; for keys, headers or a pool, give
    ``RayBackend(endpoint=factory)`` instead."""

    base_url: str
    model: str | None
    capabilities: Capabilities | None
    timeout: float
    stream: bool
    retry: RetryPolicy
    name: str

    @classmethod
    async def of(cls, endpoint: Endpoint | EndpointPool) -> EndpointRecipe:
        if isinstance(endpoint, EndpointPool):
            raise TypeError(
                "a Ray batch cannot rebuild an EndpointPool in its workers: give "
                "RayBackend(endpoint=factory), a function that returns the pool"
            )
        return cls(
            endpoint.base_url, await endpoint.model_name(), await endpoint.capabilities(),
            endpoint.timeout, endpoint.stream, endpoint.retry, endpoint.name,
        )  # fmt: skip

    def __call__(self) -> Endpoint:
        return Endpoint(
            self.base_url, model=self.model, capabilities=self.capabilities or "detect",
            timeout=self.timeout, stream=self.stream, retry=self.retry, name=self.name,
        )  # fmt: skip


@dataclass(frozen=True)
class BudgetSettings:
    """A :class:`~dynasor_client.budget.BudgetManager`'s settings; ``total``: what is left of the
    global budget for this batch."""

    total: int | None
    per_program: int | None
    count: frozenset[str]
    low_water: float
    confident_at: float
    hopeless: Hopeless
    extension: int | None
    reallocate: bool
    cached: bool

    @classmethod
    def of(cls, budget: BudgetManager) -> BudgetSettings:
        remaining = budget.remaining()
        return cls(
            None if remaining is None else max(remaining, 0), budget.per_program, budget.count,
            budget.low_water, budget.confident_at, budget.hopeless_rule, budget.extension,
            budget.reallocate, budget.cached,
        )  # fmt: skip

    @property
    def leased(self) -> bool:
        """Whether workers need the ledger: a global budget, or allowance to reallocate."""
        return self.total is not None or (self.per_program is not None and self.reallocate)

    def manager(self, lessor: Lessor | None, worker: str, lease_tokens: int) -> BudgetManager:
        options: dict[str, Any] = {
            "count": self.count, "low_water": self.low_water, "confident_at": self.confident_at,
            "hopeless": self.hopeless, "extension": self.extension, "reallocate": self.reallocate,
            "cached": self.cached,
        }  # fmt: skip
        if lessor is None:
            return BudgetManager(self.total, self.per_program, **options)
        return LeasedBudget(
            lessor, worker=worker, total=self.total, lease_tokens=lease_tokens,
            per_program=self.per_program, **options,
        )  # fmt: skip


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker's runtime is built from."""

    endpoint: EndpointFactory
    budget: BudgetSettings
    lease_tokens: int
    policy: SchedulingPolicy
    window: int | None
    gang: bool
    priority_hints: bool
    expected_tokens: float

    @classmethod
    async def of(cls, runtime: Runtime, endpoint: EndpointFactory | None, lease_tokens: int) -> WorkerSetup:
        if runtime.admission is not None:
            raise ValueError(
                "admission control decides from one runtime's load: a Ray batch does not run it "
                "(give the runtime no admission= for a distributed batch)"
            )
        return cls(
            endpoint or await EndpointRecipe.of(runtime.backend), BudgetSettings.of(runtime.budget),
            lease_tokens, runtime.policy, runtime.scheduler.window, runtime.scheduler.gang,
            runtime.priority_hints, runtime.expected_tokens(),
        )  # fmt: skip

    def runtime(self, endpoint: Endpoint | EndpointPool, budget: BudgetManager) -> Runtime:
        return Runtime(
            endpoint, budget=budget, policy=self.policy, window=self.window, gang=self.gang,
            priority_hints=self.priority_hints, expected_tokens=self.expected_tokens,
        )  # fmt: skip
