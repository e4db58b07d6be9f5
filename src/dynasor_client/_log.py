"""Standard ``logging`` with the ids of the current request and program on every record.

Ids live in context variables, so they follow asyncio tasks: a record logged anywhere while a
request (or program) is running carries its id as ``record.request_id`` / ``record.program_id`` and
in the message prefix. Use :func:`program_scope` to tag everything a program does.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("dynasor_request_id", default=None)
program_id_var: ContextVar[str | None] = ContextVar("dynasor_program_id", default=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class _ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        request_id, program_id = request_id_var.get(), program_id_var.get()
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("request_id", request_id)
        extra.setdefault("program_id", program_id)
        kwargs["extra"] = extra
        tags = " ".join(
            f"{name}={value}" for name, value in (("program", program_id), ("req", request_id)) if value
        )
        return (f"[{tags}] {msg}" if tags else msg), kwargs


def get_logger(name: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger under ``dynasor_client`` that adds the current request and program ids."""
    return _ContextAdapter(logging.getLogger(name), {})


@contextlib.contextmanager
def _scoped(var: ContextVar[str | None], value: str) -> Iterator[str]:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def program_scope(program_id: str | None = None) -> contextlib.AbstractContextManager[str]:
    """Tag every request and log record inside the block with a program id (made up if not given)."""
    return _scoped(program_id_var, program_id or new_id("prog"))


def request_scope(request_id: str | None = None) -> contextlib.AbstractContextManager[str]:
    return _scoped(request_id_var, request_id or new_id("req"))
