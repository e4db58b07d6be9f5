"""The budget manager and admission control: how many tokens each program may spend, and whether a
program is admitted at all.

:class:`BudgetManager` keeps one global token budget shared by every program of a runtime plus
per-program allowances. When the budget runs low, programs whose certaindex is high stop first and
return their answers; allowance left over by programs that finished early goes to uncertain ones
(the paper's reallocation); programs that stay uncertain after many steps are cut as hopeless.
Admission policies (:func:`reject_infeasible`, :func:`degrade_infeasible`) refuse or shrink a
program that cannot meet its deadline under the current load.
"""

from ._admission import (
    AdmissionPolicy,
    AdmissionRequest,
    Decision,
    Load,
    admit_all,
    degrade_infeasible,
    reject_infeasible,
)
from ._manager import ALL_KINDS, Account, BudgetManager

__all__ = [
    "ALL_KINDS",
    "Account",
    "AdmissionPolicy",
    "AdmissionRequest",
    "BudgetManager",
    "Decision",
    "Load",
    "admit_all",
    "degrade_infeasible",
    "reject_infeasible",
]
