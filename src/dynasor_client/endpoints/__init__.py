"""The endpoint layer: the only code that speaks HTTP to model servers.

:class:`Endpoint` wraps one OpenAI-compatible server; :class:`EndpointPool` several replicas
(routed by a :class:`RoutingPolicy`, failed ones probed back by a :class:`HealthCheck`);
:class:`Trajectory` grows one sample chunk by chunk. Everything returns the normalised types of
:mod:`._types`.
"""

from ._capabilities import Capabilities, detect
from ._endpoint import Endpoint
from ._errors import ConnectFailed, TLSVerificationFailed
from ._meter import Meter, chunk_tokens, estimate_tokens, meter_var, prompt_estimate
from ._parse import split_reasoning
from ._pool import EndpointPool
from ._retry import RetryPolicy
from ._routing import HealthCheck, LeastOutstanding, PrefixAffinity, Replica, RouteEvent, RoutingPolicy
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
from ._types import Choice, Generation, Message, Prompt, SamplingParams, TokenLogprob, Usage

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
    "Trajectory",
    "Usage",
    "chunk_tokens",
    "detect",
    "estimate_tokens",
    "meter_var",
    "prompt_estimate",
    "split_reasoning",
    "start_trajectories",
]
