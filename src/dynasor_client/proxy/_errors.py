"""Errors the proxy answers with, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Mapping (upstream = the server behind the proxy):

- An upstream HTTP error keeps its status and its error object (message, type, param, code), except
  401/403 on the proxy's own upstream key, which become 502 (the client's key is not at fault).
- Upstream unreachable (connection refused or dropped, malformed answer): 502; upstream timeout: 504.
- A dynasor program's :class:`~dynasor_client.EndpointError` maps the same way by its class:
  ``ContextTooLong`` 400 ``context_length_exceeded``, ``BadRequest`` its status, ``RateLimited``
  429, ``ServerError`` its status, ``EndpointTimeout`` 504, ``EndpointUnavailable`` and
  ``MalformedResponse`` 502, ``AuthenticationFailed`` 502.
- The proxy's own refusals: 400 (bad options or body), 401 (key), 429 ``insufficient_quota``
  (budget), 404/405 (route), 500 (a bug of the proxy, logged).

Whatever the path, the client never sees a secret of the proxy: :class:`RedactingMiddleware`
passes every response byte through one :class:`Redactor` (upstream key, upstream URL credentials,
client keys), and messages name the upstream with its credentials masked. Log records made while a
proxy runs go through the same redactor (:func:`redact_logs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._exceptions import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    DynasorError,
    EndpointError,
    EndpointTimeout,
    EndpointUnavailable,
    RateLimited,
    ServerError,
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ProxyError(DynasorError):
    """An error answered to the client as an OpenAI error object with HTTP ``status`` (a
    :class:`~dynasor_client.DynasorError`, like every error of the library)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status = message, status
        self.type = type or error_type(status)
        self.code, self.param = code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def upstream_http_error(
    status: int, content: bytes, headers: Mapping[str, str], *, own_key: bool
) -> ProxyError:
    """The error for an upstream answer with HTTP ``status`` >= 400 (module docs)."""
    message, kind, code, param = _error_fields(content)
    message = message or f"the upstream answered HTTP {status}"
    keep = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
    if status in (401, 403) and own_key:
        return ProxyError(
            f"the upstream refused the proxy's own credentials (HTTP {status}: {message}); "
            "check the proxy's --upstream-api-key",
            status=502,
            type="upstream_error",
            code="upstream_auth_failed",
        )
    return ProxyError(message, status=status, type=kind, code=code, param=param, headers=keep)


def _error_fields(content: bytes) -> tuple[str, str | None, str | int | None, str | None]:
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return content.decode("utf-8", "replace").strip()[:1000], None, None, None
    inner = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(inner, dict):
        message = inner.get("message") or inner.get("detail") or json.dumps(inner)[:1000]
        kind = inner.get("type") if isinstance(inner.get("type"), str) else None
        code = inner.get("code") if isinstance(inner.get("code"), str | int) else None
        param = inner.get("param") if isinstance(inner.get("param"), str) else None
        return str(message), kind, code, param
    return str(inner)[:1000], None, None, None


def transport_error(exc: httpx.HTTPError, upstream: str) -> ProxyError:
    """The error for an upstream that could not be reached or dropped the connection."""
    if isinstance(exc, httpx.TimeoutException):
        return ProxyError(
            f"the upstream {upstream} sent no answer within the proxy's timeout ({type(exc).__name__})",
            status=504,
            type="upstream_error",
            code="upstream_timeout",
        )
    return ProxyError(
        f"cannot reach the upstream {upstream} ({type(exc).__name__}: {exc}); is it running?",
        status=502,
        type="upstream_error",
        code="upstream_unavailable",
    )


def endpoint_error(exc: EndpointError, upstream: str | None = None) -> ProxyError:
    """The error for a dynasor program that failed on an upstream error (module docs). When the
    upstream answered (an HTTP error), its URL ``upstream`` is not shown: the message names it
    "the upstream" and quotes its answer."""
    message = str(exc)
    if upstream and exc.status is not None:
        message = message.replace(upstream, "the upstream")
    if isinstance(exc, AuthenticationFailed):
        return ProxyError(
            f"the upstream refused the proxy's own credentials: {message}",
            status=502,
            type="upstream_error",
            code="upstream_auth_failed",
        )
    if isinstance(exc, RateLimited):
        headers = {"retry-after": str(round(exc.retry_after))} if exc.retry_after is not None else {}
        return ProxyError(message, status=429, code="rate_limit_exceeded", headers=headers)
    if isinstance(exc, ContextTooLong):
        return ProxyError(message, status=exc.status or 400, code="context_length_exceeded")
    if isinstance(exc, BadRequest | ServerError):
        return ProxyError(message, status=exc.status or 502)
    if isinstance(exc, EndpointTimeout):
        return ProxyError(message, status=504, type="upstream_error", code="upstream_timeout")
    if isinstance(exc, EndpointUnavailable):
        return ProxyError(message, status=502, type="upstream_error", code="upstream_unavailable")
    return ProxyError(message, status=502, type="upstream_error", code="upstream_error")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (of 4 or more characters) replaced by ``***`` (logs)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class Redactor:
    """Replaces the proxy's secrets with ``***`` in what clients receive (:class:`RedactingMiddleware`).

    Each secret is matched as written and as JSON writes it (``\\uXXXX`` escapes). Secrets shorter
    than :attr:`MIN_LENGTH` characters are left alone: redacting them would mangle ordinary text
    (the proxy warns about them at start-up).
    """

    MIN_LENGTH = 8

    def __init__(self, secrets: Iterable[str | None]) -> None:
        variants: set[str] = set()
        self.too_short = 0
        for secret in secrets:
            if not secret:
                continue
            if len(secret) < self.MIN_LENGTH:
                self.too_short += 1
                continue
            variants |= {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
        ordered = sorted(variants, key=len, reverse=True)  # the longest first: no partial leftovers
        self._text = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes = (
            re.compile(b"|".join(re.escape(v.encode("utf-8")) for v in ordered)) if ordered else None
        )

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, text: str) -> str:
        return self._text.sub("***", text) if self._text is not None else text

    def bytes(self, data: bytes) -> bytes:
        return self._bytes.sub(b"***", data) if self._bytes is not None else data


class RedactingMiddleware:
    """ASGI middleware: every response header and body byte goes through one :class:`Redactor`.

    A response with a ``content-length`` is redacted whole (its length fixed when it changed); a
    stream is redacted message by message: each one holds whole SSE events, so a secret inside an
    event is always caught (one that a model spells out across several events is not).
    """

    def __init__(self, app: ASGIApp, redactor: Redactor) -> None:
        self.app, self.redactor = app, redactor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.redactor:
            await self.app(scope, receive, send)
            return
        redactor = self.redactor
        held: Message | None = None  # the start of a response with a content-length
        parts: list[bytes] = []

        async def redacting(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = [(k, redactor.bytes(v)) for k, v in message.get("headers", [])]
                message = {**message, "headers": headers}
                if any(k.lower() == b"content-length" for k, _ in headers):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                raw = b"".join(parts)
                body = redactor.bytes(raw)
                start, held = held, None
                if len(body) != len(raw):
                    length = str(len(body)).encode()
                    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                    start = {**start, "headers": [*headers, (b"content-length", length)]}
                await send(start)
                message = {**message, "body": body, "more_body": False}
            elif message["type"] == "http.response.body":
                message = {**message, "body": redactor.bytes(message.get("body", b""))}
            await send(message)

        await self.app(scope, receive, redacting)


# ------------------------------------------------------------------------------- logs

#: The redactors of the proxies running in this process (:func:`redact_logs`).
_log_redactors: list[Redactor] = []
_factory_lock = threading.Lock()
_installed = False


def redact_logs(redactor: Redactor) -> Callable[[], None]:
    """Redact ``redactor``'s secrets from every log record made in this process until the returned
    function is called: messages, their arguments and tracebacks (an upstream's error text can
    echo the key it got, and the library logs it in retry and decoding warnings).

    Done in the log record factory, because a record's own logger (``dynasor_client.*``,
    ``httpx``, ``uvicorn.error``) decides nothing else that every handler sees."""
    global _installed
    if not redactor:
        return lambda: None
    with _factory_lock:
        _log_redactors.append(redactor)
        if not _installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                if _log_redactors:
                    _redact_record(record, tuple(_log_redactors))
                return record

            logging.setLogRecordFactory(factory)
            _installed = True

    def remove() -> None:
        with _factory_lock, contextlib.suppress(ValueError):
            _log_redactors.remove(redactor)

    return remove


def _redact_record(record: logging.LogRecord, redactors: Iterable[Redactor]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it when it formats it
        return
    clean = message
    for redactor in redactors:
        clean = redactor.text(clean)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        trace = logging.Formatter().formatException(record.exc_info)
        clean = trace
        for redactor in redactors:
            clean = redactor.text(clean)
        record.exc_text = clean  # what formatters print instead of formatting the exception again
