"""One exception hierarchy for the whole library.

Every error a caller can see derives from :class:`DynasorError`; everything raised by the endpoint
layer derives from :class:`EndpointError`. Messages say what went wrong *and* what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "BudgetExhausted",
    "ContextTooLong",
    "DynasorError",
    "EndpointError",
    "EndpointTimeout",
    "EndpointUnavailable",
    "LocalServerError",
    "MalformedResponse",
    "ProgramCancelled",
    "RateLimited",
    "RuntimeClosed",
    "ServerError",
]


class DynasorError(Exception):
    """Base class of every error raised by dynasor-client."""


class EndpointError(DynasorError):
    """A request to an OpenAI-compatible endpoint failed.

    ``status`` is the HTTP status when the server answered, ``request_id`` our id of the request
    (it appears on every log record of that request).
    """

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class RateLimited(EndpointError):
    """HTTP 429 that persisted through every retry. Lower the request rate or in-flight bound."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.retry_after = retry_after


class ServerError(EndpointError):
    """HTTP 5xx that persisted through every retry: the server itself is failing."""


class BadRequest(EndpointError):
    """HTTP 4xx other than 429: the request is wrong and retrying will not help."""


class ContextTooLong(BadRequest):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""


class AuthenticationFailed(BadRequest):
    """HTTP 401/403: the API key is missing or wrong."""


class EndpointTimeout(EndpointError):
    """No (complete) answer arrived within the request timeout, through every retry."""


class EndpointUnavailable(EndpointError):
    """The server could not be reached (connection refused or dropped), through every retry."""


class MalformedResponse(EndpointError):
    """The server answered with something that is not a valid OpenAI-compatible response."""


class LocalServerError(DynasorError):
    """The embedded local llama.cpp server could not be started or stopped."""


class BudgetExhausted(DynasorError):
    """A program asked to generate after its token allowance (or the global budget) was spent.

    The runtime catches it and returns the program's best answer so far; an algorithm sees it only
    if it ignores :meth:`ProgramContext.stop_reason`. ``reason`` is the stop reason's value
    (``"budget"``, or ``"hopeless"`` when an uncertain program was refused more allowance).
    """

    def __init__(self, message: str, reason: str = "budget") -> None:
        super().__init__(message)
        self.reason = reason


class ProgramCancelled(DynasorError):
    """The program was cancelled (its handle, or the runtime shutting down) before it finished."""


class RuntimeClosed(DynasorError):
    """The runtime is not running: submit programs inside ``async with Runtime(...)``."""
