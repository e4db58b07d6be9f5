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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from starlette.responses import JSONResponse

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


def endpoint_error(exc: EndpointError) -> ProxyError:
    """The error for a dynasor program that failed on an upstream error (module docs)."""
    message = str(exc)
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
    """``text`` with every secret (of 4 or more characters) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
