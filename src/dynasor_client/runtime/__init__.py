"""The runtime: many reasoning programs at once under a global token budget and latency SLOs.

- :class:`Runtime` runs programs (``submit`` online, ``run_batch`` in batch) through a client-side
  :class:`Scheduler` (a window of requests in flight, the rest in policy order, gangs dispatched
  together) and a :class:`~dynasor_client.budget.BudgetManager`; deadlines return the best answer
  so far and abort in-flight requests.
- Scheduling policies compose like stop rules: ``shortest_remaining_work() + aging(0.5)``.
- ``run_batch(..., backend=)``: the same batch elsewhere (:class:`BatchBackend`; over Ray:
  :mod:`dynasor_client.distributed`), reporting through a :class:`BatchRecorder`.
- Observability: :class:`EventLog` (JSON lines), :class:`RuntimeMetrics` (counters, Prometheus text,
  summary table).
"""

from ._batch import BatchBackend, BatchRecorder, BatchResult, run_batch_sync
from ._context import RuntimeContext
from ._events import Event, EventLog, RuntimeMetrics
from ._policies import (
    Aging,
    DemoteInfeasible,
    FirstComeFirstServed,
    LeastLaxity,
    SchedulingPolicy,
    ShortestRemainingWork,
    aging,
    demote_infeasible,
    dynasor,
    fcfs,
    least_laxity,
    shortest_remaining_work,
)
from ._runtime import ProgramHandle, Runtime
from ._scheduler import Scheduler
from ._states import ProgramRecord, ProgramState

__all__ = [
    "Aging",
    "BatchBackend",
    "BatchRecorder",
    "BatchResult",
    "DemoteInfeasible",
    "Event",
    "EventLog",
    "FirstComeFirstServed",
    "LeastLaxity",
    "ProgramHandle",
    "ProgramRecord",
    "ProgramState",
    "Runtime",
    "RuntimeContext",
    "RuntimeMetrics",
    "Scheduler",
    "SchedulingPolicy",
    "ShortestRemainingWork",
    "aging",
    "demote_infeasible",
    "dynasor",
    "fcfs",
    "least_laxity",
    "run_batch_sync",
    "shortest_remaining_work",
]
