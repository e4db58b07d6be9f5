"""The budget manager and admission control: how many tokens each program may spend, and whether a
program is admitted at all.

:class:`BudgetManager` keeps one global token budget shared by every program of a runtime plus
per-program allowances. When the budget runs low, programs whose certaindex is high stop first and
return their answers; allowance left over by programs that finished early goes to uncertain ones
(the paper's reallocation); programs that stay uncertain after many steps are cut as hopeless.
Every request reserves its most tokens before it is sent (``max_tokens x n`` plus its prompt's
estimate, against the global budget, the program's allowance and any :class:`Pool` such as a proxy
key's), is shrunk or refused when they do not fit, and settles to what it used when it ends.
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
from ._manager import (
    ALL_KINDS,
    DEFAULT_RESERVATION,
    MIN_USEFUL_TOKENS,
    Account,
    BudgetManager,
    Pool,
    prompt_estimate,
)

__all__ = [
    "ALL_KINDS",
    "DEFAULT_RESERVATION",
    "MIN_USEFUL_TOKENS",
    "Account",
    "AdmissionPolicy",
    "AdmissionRequest",
    "BudgetManager",
    "Decision",
    "Load",
    "Pool",
    "admit_all",
    "degrade_infeasible",
    "prompt_estimate",
    "reject_infeasible",
]
