"""dynasor-client: certaindex-driven reasoning programs over any OpenAI-compatible server.

The public surface is re-exported here; submodules starting with ``_`` are private.
"""

from ._exceptions import (
    AuthenticationFailed,
    BadRequest,
    BudgetExhausted,
    ContextTooLong,
    DynasorError,
    EndpointError,
    EndpointTimeout,
    EndpointUnavailable,
    LocalServerError,
    MalformedResponse,
    ProgramCancelled,
    RateLimited,
    RuntimeClosed,
    ServerError,
)
from ._log import program_scope
from .endpoints import (
    Capabilities,
    Choice,
    Chunk,
    Endpoint,
    EndpointPool,
    Generation,
    RetryPolicy,
    SamplingParams,
    TokenLogprob,
    Trajectory,
    Usage,
    start_trajectories,
)
from .local import LocalLlamaServer
from .program import ProgramContext, ProgramResult, StopReason, as_program
from .runtime import ProgramHandle, ProgramState, Runtime, run_batch_sync

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "BudgetExhausted",
    "Capabilities",
    "Choice",
    "Chunk",
    "ContextTooLong",
    "DynasorError",
    "Endpoint",
    "EndpointError",
    "EndpointPool",
    "EndpointTimeout",
    "EndpointUnavailable",
    "Generation",
    "LocalLlamaServer",
    "LocalServerError",
    "MalformedResponse",
    "ProgramCancelled",
    "ProgramContext",
    "ProgramHandle",
    "ProgramResult",
    "ProgramState",
    "RateLimited",
    "RetryPolicy",
    "Runtime",
    "RuntimeClosed",
    "SamplingParams",
    "ServerError",
    "StopReason",
    "TokenLogprob",
    "Trajectory",
    "Usage",
    "__version__",
    "as_program",
    "program_scope",
    "run_batch_sync",
    "start_trajectories",
]
