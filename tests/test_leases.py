"""The global budget handed out in leases (dynasor_client.distributed), without Ray: a ledger and the
budget managers of two workers in one event loop, talking as they would through a Ray actor."""

from __future__ import annotations

import pytest

from dynasor_client import BudgetExhausted
from dynasor_client.budget import Account
from dynasor_client.distributed import Grant, LeasedBudget, LeaseLedger, LeaseRequest
from dynasor_client.endpoints import Usage
from dynasor_client.program import StopReason, TokenKind

GENERATED = TokenKind.GENERATED


def workers(
    ledger: LeaseLedger, count: int, *, lease_tokens: int, per_program: int | None = None
) -> list[LeasedBudget]:
    async def lessor(request: LeaseRequest) -> Grant:
        return ledger.lease(request)

    return [
        LeasedBudget(
            lessor, worker=f"w{i}", total=ledger.total, lease_tokens=lease_tokens, per_program=per_program
        )
        for i in range(count)
    ]


async def fit(budget: LeasedBudget, account: Account, n: int, max_tokens: int) -> tuple[int, int | None, int]:
    """As a runtime's program context reserves a request: wait while the budget says so."""
    while (shape := budget.fit(account, GENERATED, n, max_tokens, 10, wait=True)) is None:
        await budget.settled()
    return shape


def test_the_ledger_never_leases_past_the_total() -> None:
    ledger = LeaseLedger(1000)
    grants = [ledger.lease(LeaseRequest(f"w{i % 3}", tokens=300)) for i in range(5)]
    assert [g.tokens for g in grants] == [300, 300, 300, 100, 0]
    assert grants[-1].exhausted and ledger.peak_granted == 1000
    ledger.lease(LeaseRequest("w0", spent=250, leaving=True))  # w0 held 400, spent 250: 150 back
    assert ledger.granted == 850 and not ledger.exhausted
    assert ledger.lose("w1") == 300  # w1 held 300 and reported nothing: written off as spent
    assert ledger.spent == 550 and ledger.granted == 850
    with pytest.raises(ValueError, match="already left"):
        ledger.lease(LeaseRequest("w1", tokens=1))


async def test_requests_wait_for_a_lease_instead_of_shrinking() -> None:
    ledger = LeaseLedger(10_000)
    (budget,) = workers(ledger, 1, lease_tokens=500)
    await budget.start()
    assert budget.total == 500
    account = budget.open()
    n, max_tokens, held = await fit(budget, account, 4, 400)  # 1,610 tokens: more than one lease
    assert (n, max_tokens) == (4, 400) and held == 1610  # not shrunk to the lease
    assert budget.total is not None and budget.total >= 1610 and budget.waits >= 1
    budget.release(account, held)
    budget.charge(account, GENERATED, Usage(10, 1600))
    await budget.leave()
    assert ledger.spent == 1610 and ledger.granted == 1610  # the unspent lease went back


async def test_the_global_budget_binds_across_workers() -> None:
    ledger = LeaseLedger(3000)
    a, b = workers(ledger, 2, lease_tokens=1000)
    await a.start()
    await b.start()
    spent = 0
    for budget in (a, b, a, b, a):
        account = budget.open()
        try:
            _, _, held = await fit(budget, account, 1, 800)
        except BudgetExhausted:
            continue
        budget.release(account, held)
        budget.charge(account, GENERATED, Usage(10, held - 10))
        spent += held
        assert ledger.peak_granted <= 3000
    assert spent <= 3000 and ledger.exhausted
    account = a.open()
    assert a.total is not None
    a.charge(account, GENERATED, Usage(0, a.total - a.spent))
    assert a.may_dispatch(account) is StopReason.BUDGET  # its leases spent, nothing left to lease


async def test_allowance_freed_on_one_worker_extends_an_uncertain_program_on_another() -> None:
    ledger = LeaseLedger(100_000)
    a, b = workers(ledger, 2, lease_tokens=100, per_program=1000)
    await a.start()
    await b.start()
    for _ in range(2):
        sure = a.open()
        a.charge(sure, GENERATED, Usage(0, 200))
        a.close(sure)  # 800 freed each: past twice one extension (500), all but 500 go to the ledger
    await a.drain()
    assert ledger.freed == 1100 and a.freed == 500
    unsure = b.open()
    unsure.certainty, unsure.steps = 0.3, 2  # uncertain, not hopeless
    b.charge(unsure, GENERATED, Usage(0, 1000))  # its allowance is spent
    _, max_tokens, _ = await fit(b, unsure, 1, 100)  # a lease refill tells b of the freed pool...
    assert unsure.extended > 0 and unsure.allowance is not None and unsure.allowance > 1000  # ...then extends
    assert max_tokens == 100 and ledger.extended == b.received == unsure.extended == 500
    sure_b = b.open()
    sure_b.certainty, sure_b.steps = 0.95, 2
    b.charge(sure_b, GENERATED, Usage(0, 1000))
    assert b.may_dispatch(sure_b) is StopReason.BUDGET  # a sure program gets no extension


async def test_a_spent_budget_leases_nothing() -> None:
    ledger = LeaseLedger(0)
    (budget,) = workers(ledger, 1, lease_tokens=100)
    await budget.start()
    assert budget.exhausted and budget.total == 0
    with pytest.raises(BudgetExhausted):
        await fit(budget, budget.open(), 1, 50)


async def test_an_empty_batch_starts_no_workers() -> None:
    from dynasor_client import Endpoint
    from dynasor_client.distributed import RayBackend
    from dynasor_client.runtime import Runtime

    backend = RayBackend()
    async with Endpoint("http://127.0.0.1:9/v1") as endpoint, Runtime(endpoint) as runtime:
        batch = await runtime.run_batch([], backend=backend, progress=False)
    assert len(batch) == 0 and batch.metrics["programs"] == 0 and not backend.last_stats
