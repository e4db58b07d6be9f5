"""Batches over a Ray cluster: :class:`RayBackend` (module docs of :mod:`dynasor_client.distributed`).

The driver (the caller's process) keeps the batch: a queue of program indices, a few programs in
flight on each worker (more are sent as results come back, so faster workers take more), the
:class:`~dynasor_client.runtime.BatchRecorder` (results in input order, progress bar, ``save_to``).
Each worker is a Ray actor, a process of its own running the normal :class:`~dynasor_client.Runtime`
against the endpoint. A worker that dies fails its calls with a ``RayActorError``: its unfinished
programs go back to the front of the queue and run again on the workers left, under a new program
id (``<id>.<attempt>``); a result is taken once per index, so none is lost and none counted twice.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import DynasorError
from ..program import Program, ProgramResult
from ..runtime import Runtime
from ._leases import Grant, LeasedBudget, LeaseLedger, LeaseRequest
from ._setup import WorkerSetup


class WorkerLost(DynasorError):
    """Every Ray worker of a batch died: the programs that had not finished could not run."""


class RemoteProgramError(DynasorError):
    """A program failed in a worker with an error that could not be sent back as itself."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "RayBackend needs Ray: pip install 'dynasor-client[ray]' (or the Makefile's `make install`)"
        ) from exc
    return ray


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's answer for one program."""

    index: int
    result: ProgramResult | None
    error: BaseException | None


@dataclass
class WorkerState:
    """The driver's view of one worker (what ``on_settled`` sees)."""

    name: str
    pid: int
    actor: Any = field(repr=False)
    alive: bool = True
    running: set[int] = field(default_factory=set)  # program indices sent and not answered
    finished: int = 0


class LedgerActor:
    """The global budget's :class:`LeaseLedger` in a Ray actor (its calls run one at a time)."""

    def __init__(self, total: int | None) -> None:
        self.ledger = LeaseLedger(total)

    def lease(self, request: LeaseRequest) -> Grant:
        return self.ledger.lease(request)

    def lose(self, worker: str) -> int:
        return self.ledger.lose(worker)

    def stats(self) -> dict[str, object]:
        return self.ledger.stats()


class WorkerActor:
    """One worker: a runtime in this actor's event loop, for as long as the batch lasts."""

    def __init__(self, setup: WorkerSetup, ledger: Any, name: str) -> None:
        self.setup, self.ledger, self.name = setup, ledger, name
        self.runtime: Runtime | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._host: asyncio.Task[None] | None = None

    async def _lease(self, request: LeaseRequest) -> Grant:
        grant: Grant = await self.ledger.lease.remote(request)
        return grant

    async def start(self) -> int:
        """Start the runtime; returns this process's id."""
        self._host = asyncio.get_running_loop().create_task(self._serve())
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait([ready, self._host], return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self._host  # raises why it could not start
        return os.getpid()

    async def _serve(self) -> None:
        setup = self.setup
        lessor = self._lease if self.ledger is not None else None
        budget = setup.budget.manager(lessor, self.name, setup.lease_tokens)
        async with setup.endpoint() as endpoint, setup.runtime(endpoint, budget) as runtime:
            if isinstance(budget, LeasedBudget):
                await budget.start()
            self.runtime = runtime
            self._ready.set()
            await self._stop.wait()

    async def run(self, index: int, program_id: str, program: Program, deadline_s: float | None) -> Outcome:
        assert self.runtime is not None
        handle = self.runtime.submit(program, program_id=program_id, deadline_s=deadline_s)
        try:
            return Outcome(index, await handle, None)
        except asyncio.CancelledError:
            handle.cancel()  # the driver gave up on it: abort its requests
            raise
        except Exception as exc:
            return Outcome(index, None, _portable(exc))

    async def stop(self) -> dict[str, Any]:
        """Give back what the leases left, stop the runtime (programs ended: the driver waited for
        every one); returns its figures."""
        runtime = self.runtime
        assert runtime is not None and self._host is not None
        budget = runtime.budget
        leased = budget if isinstance(budget, LeasedBudget) else None
        if leased is not None:
            await leased.leave()
        self._stop.set()
        await self._host
        return {
            "worker": self.name,
            "pid": os.getpid(),
            "metrics": runtime.metrics.as_dict(),
            "spent": budget.spent,
            "leased": None if leased is None else leased.total,
            "lease_messages": 0 if leased is None else leased.messages,
            "lease_waits": 0 if leased is None else leased.waits,
        }


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RemoteProgramError(f"{type(exc).__name__}: {exc}")
    return exc
