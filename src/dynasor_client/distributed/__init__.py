"""Running past one machine: batches over a Ray cluster under one global token budget.

``await runtime.run_batch(programs, backend=RayBackend(workers=2))`` spreads a batch over Ray
workers (actors: processes, on any node of the cluster), each running the normal
:class:`~dynasor_client.Runtime` against the endpoint; results come back in input order in the same
:class:`~dynasor_client.runtime.BatchResult`, with the same progress bar. A worker that dies has
its unfinished programs run again on the others: none is lost, none counted twice. Programs must
pickle: ``as_program(fn, question, **options)`` with a module-level ``fn``.

What is global and what is not:

- Global: the token budget (one :class:`LeaseLedger` in a Ray actor hands it out in leases of
  ``lease_tokens``; leases never exceed it), the freed per-program allowance that reallocation gives
  to uncertain programs, and the budget's pressure (as of each worker's latest lease message).
- Per worker: the scheduler and its window, the policy, deadlines (a program's clock starts when
  its worker starts it), admission-free submission, the prompt-estimate scale, metrics (summed into
  the batch's). The cost of distribution is the lease: a worker may hold up to about one lease it
  has not spent, and sees the others' spending one message late.

Ray is the ``[ray]`` extra, imported only when a batch runs on it.
"""

from ._backend import RayBackend
from ._leases import Grant, LeasedBudget, LeaseLedger, LeaseRequest
from ._ray import RemoteProgramError, WorkerLost, WorkerState
from ._setup import EndpointRecipe

__all__ = [
    "EndpointRecipe",
    "Grant",
    "LeaseLedger",
    "LeaseRequest",
    "LeasedBudget",
    "RayBackend",
    "RemoteProgramError",
    "WorkerLost",
    "WorkerState",
]
