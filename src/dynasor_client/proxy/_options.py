"""Which technique a request asks for: the ``dynasor`` body field and the model-name suffix.

**Body field** (``extra_body={"dynasor": {...}}`` with the openai SDK). Keys:

=================  =============  ===========================================================
key                algorithms     meaning
=================  =============  ===========================================================
``algorithm``      all            ``"sc"`` (self-consistency), ``"best_of_n"``, ``"cot"``
                                  (Dynasor-CoT, long chain-of-thought probing) or ``"none"``
                                  (pass-through). Aliases: ``self_consistency``, ``bon``,
                                  ``dynasor_cot``, ``passthrough``.
``deadline_s``     all            seconds the request may take (also the ``X-Dynasor-Deadline-S``
                                  header; the smaller wins). A program past it answers with its
                                  best answer so far.
``token_budget``   sc, bon, cot   most tokens the program may spend (prompt included).
``task``           sc, bon, cot   answer extraction: ``"math"`` (default), ``"gsm8k"``,
                                  ``"multiple_choice"``.
``progress``       sc, bon, cot   streaming only: send a progress chunk after each round or probe
                                  (``choices: []`` and a ``dynasor.progress`` object).
``n``              sc, bon        most samples (default 16).
``detect``         sc, bon        samples of the first round, where the stop rule is checked
                                  (default 5 for sc, 4 for bon; at most ``n``).
``rule``           sc             ``"paper"`` (default: stop at the detect round when the answer
                                  entropy certaindex >= 0.7) or ``"adaptive"`` (Adaptive-Consistency).
``aggregate``      bon            ``"max"`` (default) or ``"weighted_majority"``.
``effort``         cot            ``"low"``, ``"medium"`` (default) or ``"high"`` (table below).
``chunk_tokens``   cot            tokens decoded between probes (overrides the effort's).
``window``         cot            probes that must agree to stop (overrides the effort's).
=================  =============  ===========================================================

Effort of ``cot``: ``low`` = 32-token chunks, 2 agreeing probes, 1024 tokens at most; ``medium`` =
64, 3, 2048; ``high`` = 64, 5, 4096. The request's ``max_tokens`` (or ``max_completion_tokens``)
overrides the most tokens.

**Model suffix** (for applications that can only set ``model``)::

    model   := base "+" technique
    technique := "sc" [N] | "bon" [N] | "best_of_n" [N] | "cot" ["-" ("low" | "medium" | "high")]

e.g. ``qwen+sc8`` (self-consistency, at most 8 samples), ``qwen+bon16``, ``qwen+cot-high``. The
text after the last ``+`` is a technique only when it starts with one of those words (not followed
by a letter): ``my+model`` is a plain model name, ``qwen+sc8x`` is refused. A suffix and a body
field may be combined (the field's keys win); naming two different algorithms is refused.

Unknown keys, wrong types and out-of-range values are refused with 400 and a message naming the
key and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ProxyError

Algorithm = Literal["sc", "best_of_n", "cot"]
Effort = Literal["low", "medium", "high"]

ALIASES: dict[str, Algorithm | None] = {
    "sc": "sc",
    "self_consistency": "sc",
    "self-consistency": "sc",
    "best_of_n": "best_of_n",
    "best-of-n": "best_of_n",
    "bon": "best_of_n",
    "cot": "cot",
    "dynasor_cot": "cot",
    "dynasor-cot": "cot",
    "none": None,
    "passthrough": None,
    "pass-through": None,
}
#: Effort of Dynasor-CoT: (chunk_tokens, window, max_tokens).
EFFORTS: dict[str, tuple[int, int, int]] = {
    "low": (32, 2, 1024),
    "medium": (64, 3, 2048),
    "high": (64, 5, 4096),
}
TASKS = ("math", "gsm8k", "multiple_choice")
DEFAULT_N = 16
MAX_N = 256

_COMMON = {"algorithm", "deadline_s", "token_budget", "task", "progress"}
_KEYS: dict[Algorithm | None, set[str]] = {
    None: {"algorithm", "deadline_s"},
    "sc": _COMMON | {"n", "detect", "rule"},
    "best_of_n": _COMMON | {"n", "detect", "aggregate"},
    "cot": _COMMON | {"effort", "chunk_tokens", "window"},
}
_SUFFIX = re.compile(r"^(?P<word>sc|bon|best_of_n|cot)(?![a-z_])(?P<rest>.*)$", re.IGNORECASE)
DEADLINE_HEADER = "x-dynasor-deadline-s"


@dataclass(frozen=True, slots=True)
class DynasorOptions:
    """A request's technique and its settings (module docs); ``algorithm`` None is pass-through."""

    algorithm: Algorithm | None = None
    model: str | None = None  # the model named, suffix removed
    n: int = DEFAULT_N
    detect: int | None = None
    rule: Literal["paper", "adaptive"] = "paper"
    aggregate: Literal["max", "weighted_majority"] = "max"
    effort: Effort = "medium"
    chunk_tokens: int | None = None
    window: int | None = None
    task: str = "math"
    deadline_s: float | None = None
    token_budget: int | None = None
    progress: bool = False

    @property
    def cot_settings(self) -> tuple[int, int, int]:
        """(chunk_tokens, window, max_tokens) of Dynasor-CoT."""
        chunk, window, most = EFFORTS[self.effort]
        return self.chunk_tokens or chunk, self.window or window, most


def parse_suffix(model: str) -> tuple[str, dict[str, Any]]:
    """``(base model, options)`` of a model name (``qwen+sc8`` -> ``("qwen", {algorithm: sc, n: 8})``)."""
    base, plus, tail = model.rpartition("+")
    if not plus:
        return model, {}
    match = _SUFFIX.match(tail)
    if match is None:
        return model, {}
    word, rest = match["word"].lower(), match["rest"]
    algorithm = ALIASES[word]
    options: dict[str, Any] = {"algorithm": algorithm}
    if algorithm == "cot":
        if rest:
            effort = rest.removeprefix("-").lower()
            if not rest.startswith("-") or effort not in EFFORTS:
                raise ProxyError(
                    f"model suffix '+{tail}': Dynasor-CoT takes '+cot' or '+cot-low|medium|high'",
                    param="model",
                )
            options["effort"] = effort
    elif rest:
        if not rest.isdigit():
            raise ProxyError(
                f"model suffix '+{tail}': expected '+{word}' or '+{word}N' with N the most samples "
                f"(e.g. '+{word}8')",
                param="model",
            )
        options["n"] = int(rest)
    if not base:
        raise ProxyError(f"model {model!r} names a technique but no model before '+'", param="model")
    return base, options


def parse_options(body: Mapping[str, Any], deadline_header: str | None = None) -> DynasorOptions:
    """The options of a request body (its ``model`` suffix and ``dynasor`` field) and deadline header."""
    model = body.get("model")
    base, options = parse_suffix(model) if isinstance(model, str) else (model, {})
    field = body.get("dynasor")
    if field is not None and not isinstance(field, Mapping):
        raise ProxyError('\'dynasor\' must be an object, e.g. {"algorithm": "sc", "n": 8}', param="dynasor")
    field = dict(field or {})
    if "algorithm" in field:
        name = field["algorithm"]
        if not isinstance(name, str) or name.lower() not in ALIASES:
            raise ProxyError(
                f"dynasor.algorithm {name!r} is not known; use one of 'sc', 'best_of_n', 'cot', 'none'",
                param="dynasor.algorithm",
            )
        chosen = ALIASES[name.lower()]
        if "algorithm" in options and options["algorithm"] != chosen:
            raise ProxyError(
                f"the model suffix asks for {options['algorithm']!r} but dynasor.algorithm for {chosen!r}",
                param="dynasor.algorithm",
            )
        field["algorithm"] = chosen
    merged = {**options, **field}
    algorithm: Algorithm | None = merged.get("algorithm")
    if algorithm is None and set(merged) - {"algorithm", "deadline_s"}:
        extra = sorted(set(merged) - {"algorithm", "deadline_s"})
        raise ProxyError(
            f'dynasor options {extra} need an algorithm: add "algorithm": "sc", "best_of_n" or "cot"',
            param="dynasor",
        )
    unknown = sorted(set(merged) - _KEYS[algorithm])
    if unknown:
        raise ProxyError(
            f"unknown dynasor option(s) {unknown} for algorithm {algorithm or 'none'!r}; "
            f"allowed: {sorted(_KEYS[algorithm])}",
            param="dynasor",
        )
    values: dict[str, Any] = {"algorithm": algorithm, "model": base}
    if "n" in merged:
        values["n"] = _int(merged, "n", 1, MAX_N)
    if "detect" in merged:
        values["detect"] = _int(merged, "detect", 1, MAX_N)
    for key, low, high in (("chunk_tokens", 1, 8192), ("window", 1, 64), ("token_budget", 1, 10**12)):
        if key in merged:
            values[key] = _int(merged, key, low, high)
    for key, allowed in (
        ("rule", ("paper", "adaptive")),
        ("aggregate", ("max", "weighted_majority")),
        ("effort", tuple(EFFORTS)),
        ("task", TASKS),
    ):
        if key in merged:
            value = merged[key]
            if value not in allowed:
                raise ProxyError(
                    f"dynasor.{key} must be one of {list(allowed)}, got {value!r}", param=f"dynasor.{key}"
                )
            values[key] = value
    if "progress" in merged:
        if not isinstance(merged["progress"], bool):
            raise ProxyError("dynasor.progress must be true or false", param="dynasor.progress")
        values["progress"] = merged["progress"]
    deadlines = []
    if "deadline_s" in merged:
        deadlines.append(_seconds(merged["deadline_s"], "dynasor.deadline_s"))
    if deadline_header is not None:
        try:
            deadlines.append(_seconds(float(deadline_header), "X-Dynasor-Deadline-S"))
        except ValueError:
            raise ProxyError(
                f"header X-Dynasor-Deadline-S must be a number of seconds, got {deadline_header!r}"
            ) from None
    if deadlines:
        values["deadline_s"] = min(deadlines)
    return DynasorOptions(**values)


def _int(options: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProxyError(
            f"dynasor.{key} must be an integer from {low} to {high}, got {value!r}", param=f"dynasor.{key}"
        )
    return value


def _seconds(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ProxyError(f"{where} must be a positive number of seconds, got {value!r}", param=where)
    return float(value)
