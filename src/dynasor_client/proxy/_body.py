"""A generation request's body: one JSON object, checked before anything else runs (the rules are
in :mod:`._app`'s docs): nesting depth on the bytes, no non-finite numbers, no lone surrogates."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ._errors import ProxyError

MAX_NESTING = 128


def json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 for anything else (module docs)."""
    if _nesting_exceeds(raw, MAX_NESTING):
        raise ProxyError(f"the request body nests arrays and objects more than {MAX_NESTING} deep")
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except _NotJson as exc:
        raise ProxyError(f"the request body is not valid JSON: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ProxyError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProxyError("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):  # only an escape can make one: raw UTF-8 cannot hold it
        where = _lone_surrogate(body)
        if where is not None:
            raise ProxyError(
                "the request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                f"escape) in {where or 'a key'}: text must be valid Unicode",
                param=where or None,
            )
    return body


class _NotJson(ValueError):
    """A number that JSON does not have (``NaN``, ``Infinity``, a float overflowing to infinity)."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"{shown(text)} is too large for a number")
    return value


#: A JSON string (an unterminated one runs to the end: linear, no backtracking) or a bracket.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.?)*(?:"|\Z)|[\[\]{}]', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``limit`` deep."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(raw):
        token = match[0]
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _lone_surrogate(body: Any) -> str | None:
    """Where (``messages[0].content``; ``""``: a top-level key) a string or key of ``body`` holds a
    lone surrogate; None if none does."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return path
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return None


def shown(value: Any, most: int = 100) -> str:
    """``repr(value)`` for a message, cut to ``most`` characters."""
    text = repr(value)
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"
