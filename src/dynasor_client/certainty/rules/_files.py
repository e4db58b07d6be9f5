"""Rules from JSON files: :func:`load_rule` reads a calibration result or a file holding just a rule;
:func:`default_rule` is the rule shipped with the library (``default_rule.json`` next to this module)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..signals import register_builtin_signals
from ._base import StopRule, rule_from_dict

DEFAULT_RULE_FILE = "default_rule.json"


def rule_from_json(data: dict[str, Any]) -> StopRule:
    """A rule from its ``to_dict`` form, or from a file's JSON holding one under ``"rule"``, with
    every built-in signal available."""
    register_builtin_signals()
    return rule_from_dict(data.get("rule", data) if "kind" not in data else data)


def load_rule(path: str | Path) -> StopRule:
    """The rule in a calibration result file, or in a file holding just a rule (``{"kind": ...}``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return rule_from_json(data)


def default_rule() -> StopRule:
    """The library's default stop rule: parameters calibrated on the SVAMP (Codex, 30 samples) train
    split, shipped as ``dynasor_client/certainty/rules/default_rule.json`` (see its ``fitted_on`` and
    its held-out figures). Recalibrate for your model and task with ``dynasor-client calibrate``."""
    text = (
        resources.files("dynasor_client.certainty.rules")
        .joinpath(DEFAULT_RULE_FILE)
        .read_text(encoding="utf-8")
    )
    return rule_from_json(json.loads(text))
