"""The endpoint layer: the only code that speaks HTTP to model servers.

:class:`Endpoint` wraps one OpenAI-compatible server; :class:`EndpointPool` several replicas
(routed by a :class:`RoutingPolicy`, failed ones probed back by a :class:`HealthCheck`);
:class:`Trajectory` grows one sample chunk by chunk; ``Endpoint.watch`` streams one sample as a
:class:`Trace` a :class:`Monitor` can close mid-stream. Everything returns the normalised types of
:mod:`._types`.
"""

from ._capabilities import Capabilities, detect
from ._endpoint import Endpoint
from ._errors import ConnectFailed, TLSVerificationFailed
from ._meter import Meter, chunk_tokens, estimate_tokens, meter_var, prompt_estimate
from ._monitor import Monitor, lowest_group_confidence_below, monitor_when, tokens_at_least
from ._parse import split_reasoning
from ._pool import EndpointPool
from ._retry import RetryPolicy
from ._routing import HealthCheck, LeastOutstanding, PrefixAffinity, Replica, RouteEvent, RoutingPolicy
from ._stream import Piece, Trace, token_confidence
from ._trajectory import (
    Chunk,
    Continuation,
    ContinuationMode,
    PrefillContinuation,
    TextContinuation,
    TokenContinuation,
    Trajectory,
    start_trajectories,
)
from ._types import (
    Choice,
    Generation,
    Message,
    Prompt,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    Usage,
    tool_calls_key,
)

__all__ = [
    "Capabilities",
    "Choice",
    "Chunk",
    "ConnectFailed",
    "Continuation",
    "ContinuationMode",
    "Endpoint",
    "EndpointPool",
    "Generation",
    "HealthCheck",
    "LeastOutstanding",
    "Message",
    "Meter",
    "Monitor",
    "Piece",
    "PrefillContinuation",
    "PrefixAffinity",
    "Prompt",
    "Replica",
    "RetryPolicy",
    "RouteEvent",
    "RoutingPolicy",
    "SamplingParams",
    "TLSVerificationFailed",
    "TextContinuation",
    "TokenContinuation",
    "TokenLogprob",
    "ToolCall",
    "Trace",
    "Trajectory",
    "Usage",
    "chunk_tokens",
    "detect",
    "estimate_tokens",
    "lowest_group_confidence_below",
    "meter_var",
    "monitor_when",
    "prompt_estimate",
    "split_reasoning",
    "start_trajectories",
    "token_confidence",
    "tokens_at_least",
    "tool_calls_key",
]
