"""Translating the openai SDK's and the HTTP stack's errors into our hierarchy."""

from __future__ import annotations

import json
import re
import ssl
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import openai

from .._exceptions import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    EndpointError,
    EndpointTimeout,
    EndpointUnavailable,
    MalformedResponse,
    RateLimited,
    ServerError,
)

# openai>=3 runs on httpx2, older releases on httpx; a dropped stream surfaces as either's error.
_transport_errors: list[type[BaseException]] = [httpx.TransportError]
_timeout_errors: list[type[BaseException]] = [httpx.TimeoutException]
_connect_errors: list[type[BaseException]] = [httpx.ConnectError, httpx.UnsupportedProtocol]
try:  # pragma: no cover - depends on the installed openai
    import httpx2

    _transport_errors.append(httpx2.TransportError)
    _timeout_errors.append(httpx2.TimeoutException)
    _connect_errors += [httpx2.ConnectError, httpx2.UnsupportedProtocol]
except ImportError:  # pragma: no cover
    pass
TRANSPORT_ERRORS = tuple(_transport_errors)
TIMEOUT_ERRORS = tuple(_timeout_errors)
CONNECT_ERRORS = tuple(_connect_errors)


class ConnectFailed(EndpointUnavailable):
    """No connection could be opened (refused, host unreachable, name not resolved).

    Unlike a connection dropped mid-answer, this is retried at most ``RetryPolicy.connect_attempts``
    times in all: a server that is down fails fast instead of being waited on.
    """


class TLSVerificationFailed(EndpointUnavailable):
    """TLS failed: the certificate could not be verified (self-signed, expired, wrong host) or the
    handshake failed.

    Never retried: the same certificate fails the same way. Fix the certificate or the URL.
    """


_CONTEXT_PATTERNS = re.compile(
    r"maximum context length|context length|context_length_exceeded|exceeds the available context|"
    r"too many tokens|prompt is too long|exceed_context_size",
    re.IGNORECASE,
)
_N_LIMIT = re.compile(r"'n'.*?<=\s*(\d+)|\bn\b[^.]*?(?:at most|<=|maximum(?: of)?)\s*(\d+)", re.IGNORECASE)


def error_message(exc: openai.APIStatusError) -> str:
    body: Any = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(exc.message)


def n_limit_from(exc: BaseException) -> int | None:
    """The largest ``n`` a server said it accepts, parsed from its 400 message (llama.cpp style)."""
    if not isinstance(exc, BadRequest):
        return None
    match = _N_LIMIT.search(str(exc))
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def retry_after_seconds(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # HTTP-date form
        import datetime as dt

        when = parsedate_to_datetime(value)
        return max((when - dt.datetime.now(when.tzinfo)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def translate(exc: BaseException, *, where: str, request_id: str | None) -> EndpointError:
    """Map any error raised while talking to ``where`` to an :class:`EndpointError`."""
    if isinstance(exc, EndpointError):
        return exc
    if isinstance(exc, (openai.APITimeoutError, *TIMEOUT_ERRORS)):
        return EndpointTimeout(
            f"{where}: no complete answer within the timeout; raise `timeout=` or lower max_tokens",
            request_id=request_id,
        )
    if isinstance(exc, (openai.APIConnectionError, *TRANSPORT_ERRORS)):
        causes = list(_causes(exc))
        tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
        if tls is not None:
            what = (
                "TLS certificate verification failed: the server's certificate is not trusted "
                "(self-signed, expired or for another host)"
                if isinstance(tls, ssl.SSLCertVerificationError)
                else "TLS handshake failed (is it an https server?)"
            )
            return TLSVerificationFailed(f"{where}: {what}; not retried ({tls})", request_id=request_id)
        if any(isinstance(c, CONNECT_ERRORS) for c in causes):
            return ConnectFailed(
                f"{where}: cannot connect ({causes[-1]}); is the server running and reachable?",
                request_id=request_id,
            )
        return EndpointUnavailable(
            f"{where}: connection failed or dropped ({exc.__cause__ or exc}); is the server running "
            f"and reachable?",
            request_id=request_id,
        )
    if isinstance(exc, openai.APIStatusError):
        status, message = exc.status_code, error_message(exc)
        text = f"{where}: HTTP {status}: {message}"
        if status == 429:
            return RateLimited(
                f"{text} (rate limited; lower requests_per_second or max_in_flight)",
                retry_after=retry_after_seconds(exc.response.headers),
                request_id=request_id,
            )
        if status in (401, 403):
            return AuthenticationFailed(
                f"{text} (check api_key or the OPENAI_API_KEY environment variable)",
                status=status,
                request_id=request_id,
            )
        if status >= 500:
            return ServerError(text, status=status, request_id=request_id)
        if _CONTEXT_PATTERNS.search(message):
            return ContextTooLong(
                f"{text} (shorten the prompt or lower max_tokens)", status=status, request_id=request_id
            )
        return BadRequest(text, status=status, request_id=request_id)
    malformed = (json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError)
    if isinstance(exc, (*malformed, KeyError, TypeError)):
        return MalformedResponse(
            f"{where}: the server's answer is not a valid OpenAI-compatible response ({exc})",
            request_id=request_id,
        )
    if isinstance(exc, openai.OpenAIError):
        return EndpointError(f"{where}: {exc}", request_id=request_id)
    raise exc


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in chain and len(chain) < 16:
        chain.append(node)
        node = node.__cause__ or node.__context__
    return chain
