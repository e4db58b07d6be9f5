"""Signals by name, so that a rule saved as JSON loads again: every built-in signal registers itself
here when its module is imported (importing this package imports them all)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from ._base import Signal
from ._entropy import EntropyCertainty

_SIGNALS: dict[str, Callable[..., Signal]] = {"entropy": EntropyCertainty}


def register_signal(name: str, factory: Callable[..., Signal]) -> None:
    """Make a signal loadable from JSON by ``name`` (built-in signals register themselves)."""
    _SIGNALS[name] = factory


def registered_signals() -> dict[str, Callable[..., Signal]]:
    """Every signal loadable by name (the candidates calibration tries)."""
    return dict(_SIGNALS)


def register_builtin_signals() -> None:
    """Import the signals beyond entropy so rules naming them load (they register on import)."""
    with contextlib.suppress(ImportError):
        importlib.import_module("dynasor_client.certainty.signals")


def signal_from_dict(data: dict[str, Any]) -> Signal:
    try:
        factory = _SIGNALS[data["name"]]
    except KeyError as exc:
        raise ValueError(f"unknown signal {data.get('name')!r}; known: {sorted(_SIGNALS)}") from exc
    return factory(**data.get("params", {}))


def signal_to_dict(signal: Signal) -> dict[str, Any]:
    return {"name": signal.name, "params": signal.params()}
