"""dynasor-client: certaindex-driven reasoning programs over any OpenAI-compatible server.

The public surface is re-exported here; submodules starting with ``_`` are private.
"""

from ._exceptions import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    DynasorError,
    EndpointError,
    EndpointTimeout,
    EndpointUnavailable,
    LocalServerError,
    MalformedResponse,
    RateLimited,
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

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
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
    "RateLimited",
    "RetryPolicy",
    "SamplingParams",
    "ServerError",
    "TokenLogprob",
    "Trajectory",
    "Usage",
    "__version__",
    "program_scope",
    "start_trajectories",
]
