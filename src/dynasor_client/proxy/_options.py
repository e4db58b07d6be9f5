"""Which technique a request asks for: the ``dynasor`` body field and the model-name suffix.

Every algorithm comes from the registry (:mod:`._registry`), which also validates its options
(pydantic models).

**Body field** (``extra_body={"dynasor": {...}}`` with the openai SDK). Keys:

=================  =================  ========================================================
key                algorithms         meaning
=================  =================  ========================================================
``algorithm``      all                ``"sc"`` (self-consistency), ``"best_of_n"``, ``"cot"``
                                      (Dynasor-CoT, long chain-of-thought probing),
                                      ``"rebase"``, ``"mcts"`` (tree search over reasoning
                                      steps) or ``"none"`` (pass-through). Aliases:
                                      ``self_consistency``, ``bon``, ``dynasor_cot``,
                                      ``passthrough``.
``deadline_s``     all                seconds the request may take (also the
                                      ``X-Dynasor-Deadline-S`` header; the smaller wins). A
                                      program past it answers with its best answer so far.
``token_budget``   all but none       most tokens the program may spend (prompt included).
``task``           all but none       answer extraction: ``"math"`` (default), ``"gsm8k"``,
                                      ``"multiple_choice"``.
``progress``       all but none       streaming only: send a progress chunk after each round,
                                      probe, depth or iteration (``choices: []`` and a
                                      ``dynasor.progress`` object).
``n``              sc, bon            most samples (default 16).
``detect``         sc, bon            samples of the first round, where the stop rule is
                                      checked (default 5 for sc, 4 for bon; at most ``n``).
``rule``           sc                 ``"paper"`` (default: stop at the detect round when the
                                      answer entropy certaindex >= 0.7) or ``"adaptive"``
                                      (Adaptive-Consistency).
``aggregate``      bon                ``"max"`` (default) or ``"weighted_majority"``.
``reward``         bon, rebase, mcts  the reward model: ``"judge"`` (the upstream model as a
                                      yes/no judge) or ``"pooling"`` (the upstream's
                                      ``/pooling``); default: the proxy's (``--reward``).
``effort``         cot                ``"low"``, ``"medium"`` (default) or ``"high"`` (below).
``chunk_tokens``   cot                tokens decoded between probes (overrides the effort's).
``window``         cot                probes that must agree to stop (overrides the effort's).
``width``          rebase             leaves of the tree (default 8).
``iterations``     mcts               iterations (default 16).
``expansions``     mcts               children of a node expanded at once (default 2).
``max_depth``      rebase, mcts       most reasoning steps (default 8 rebase, 6 mcts).
``step_tokens``    rebase, mcts       most tokens of one step (default 256).
=================  =================  ========================================================

Effort of ``cot``: ``low`` = 32-token chunks, 2 agreeing probes, 1024 tokens at most; ``medium`` =
64, 3, 2048; ``high`` = 64, 5, 4096. The request's ``max_tokens`` (or ``max_completion_tokens``)
overrides the most tokens.

**Model suffix** (for applications that can only set ``model``)::

    model   := base "+" technique
    technique := "sc" [N] | "bon" [N] | "best_of_n" [N] | "cot" ["-" ("low" | "medium" | "high")]
               | "rebase" [N] | "mcts" [N]

e.g. ``qwen+sc8`` (self-consistency, at most 8 samples), ``qwen+bon16``, ``qwen+cot-high``,
``qwen+rebase4`` (width 4), ``qwen+mcts8`` (8 iterations). The text after the last ``+`` is a
technique only when it starts with one of those words (not followed by a letter): ``my+model`` is
a plain model name, ``qwen+sc8x`` is refused. A suffix and a body field may be combined (the
field's keys win); naming two different algorithms is refused.

Unknown keys, wrong types and out-of-range values are refused with 400 and a message naming the
key (``dynasor.KEY``) and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ._errors import ProxyError
from ._registry import ALGORITHMS, EFFORTS, PASSTHROUGH, Entry, Options, lookup

DEADLINE_HEADER = "x-dynasor-deadline-s"
#: Keys every request may give, pass-through included: read before the algorithm's options.
_ANY = ("algorithm", "deadline_s")

__all__ = ["DEADLINE_HEADER", "EFFORTS", "DynasorOptions", "parse_options", "parse_suffix"]


@dataclass(frozen=True, slots=True)
class DynasorOptions:
    """A request's technique and its settings (module docs); ``algorithm`` None is pass-through.

    ``settings`` are the algorithm's validated options (its registry entry's pydantic model), also
    readable as attributes of this object (``options.n``, ``options.cot_settings``).
    """

    algorithm: str | None = None
    model: str | None = None  # the model named, suffix removed
    deadline_s: float | None = None
    settings: Options | None = None

    @property
    def entry(self) -> Entry[Any] | None:
        """The algorithm's registry entry (None: pass-through)."""
        return None if self.algorithm is None else ALGORITHMS[self.algorithm]

    @property
    def token_budget(self) -> int | None:
        return None if self.settings is None else self.settings.token_budget

    def __getattr__(self, name: str) -> Any:
        settings = object.__getattribute__(self, "settings")
        if name.startswith("_") or settings is None:
            raise AttributeError(name)
        return getattr(settings, name)


def _suffix_pattern() -> re.Pattern[str]:
    words = sorted(
        (w for e in ALGORITHMS.values() if e.suffix for w in e.suffix.words), key=len, reverse=True
    )
    # ASCII: under Unicode case folding "ſc" (long s) or "K" (Kelvin sign) would match "sc", "k".
    flags = re.IGNORECASE | re.ASCII | re.DOTALL
    return re.compile(rf"(?P<word>{'|'.join(map(re.escape, words))})(?![a-z_])(?P<rest>.*)\Z", flags)


#: The most digits of a suffix's count (every count's range ends far below 10**6).
_COUNT_DIGITS = 6


def _shown(text: str, most: int = 40) -> str:
    """``text`` for a message, cut to ``most`` characters (a 5,000-digit suffix is not echoed)."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def parse_suffix(model: str) -> tuple[str, dict[str, Any]]:
    """``(base model, options)`` of a model name (``qwen+sc8`` -> ``("qwen", {algorithm: sc, n: 8})``)."""
    base, plus, tail = model.rpartition("+")
    if not plus:
        return model, {}
    match = _suffix_pattern().match(tail)
    if match is None:
        return model, {}
    word, rest = match["word"].lower(), match["rest"]
    entry = next(e for e in ALGORITHMS.values() if e.suffix and word in e.suffix.words)
    suffix = entry.suffix
    assert suffix is not None
    options: dict[str, Any] = {"algorithm": entry.name}
    if rest and suffix.choice is not None:
        choice = rest.removeprefix("-").lower()
        if not rest.startswith("-") or choice not in suffix.choices:
            raise ProxyError(
                f"model suffix '+{_shown(tail)}': {entry.title} takes '+{word}' or "
                f"'+{word}-{'|'.join(suffix.choices)}'",
                param="model",
            )
        options[suffix.choice] = choice
    elif rest:
        # ASCII digits only: str.isdigit() is true for "²", which int() refuses.
        if suffix.count is None or not (rest.isascii() and rest.isdigit()):
            expected = f"'+{word}'" + (
                f" or '+{word}N' with N {suffix.count_meaning}" if suffix.count else ""
            )
            raise ProxyError(
                f"model suffix '+{_shown(tail)}': expected {expected} (e.g. '+{word}8')", param="model"
            )
        if len(rest.lstrip("0")) > _COUNT_DIGITS:
            raise ProxyError(
                f"model suffix '+{_shown(tail)}': N ({suffix.count_meaning}) is far too large "
                f"(e.g. '+{word}8')",
                param="model",
            )
        options[suffix.count] = int(rest)
    if not base:
        raise ProxyError(f"model {_shown(model)!r} names a technique but no model before '+'", param="model")
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
        try:
            if not isinstance(name, str):
                raise KeyError(name)
            entry = lookup(name)
        except KeyError:
            known = ", ".join(repr(n) for n in (*ALGORITHMS, PASSTHROUGH[0]))
            raise ProxyError(
                f"dynasor.algorithm {name!r} is not known; use one of {known}", param="dynasor.algorithm"
            ) from None
        chosen = None if entry is None else entry.name
        if "algorithm" in options and options["algorithm"] != chosen:
            raise ProxyError(
                f"the model suffix asks for {options['algorithm']!r} but dynasor.algorithm for {chosen!r}",
                param="dynasor.algorithm",
            )
        field["algorithm"] = chosen
    merged = {**options, **field}
    algorithm: str | None = merged.pop("algorithm", None)
    deadline = merged.pop("deadline_s", None)
    settings: Options | None = None
    if algorithm is None:
        if merged:
            names = ", ".join(f'"{n}"' for n in ALGORITHMS)
            raise ProxyError(
                f'dynasor options {sorted(merged)} need an algorithm: add "algorithm": one of {names}',
                param="dynasor",
            )
    else:
        from_suffix = {k: model for k in options if k not in field} if isinstance(model, str) else {}
        settings = _validate(ALGORITHMS[algorithm], merged, from_suffix)
    deadlines = []
    if deadline is not None:
        deadlines.append(_seconds(deadline, "dynasor.deadline_s"))
    if deadline_header is not None:
        try:
            deadlines.append(_seconds(float(deadline_header), "X-Dynasor-Deadline-S"))
        except ValueError:
            raise ProxyError(
                f"header X-Dynasor-Deadline-S must be a number of seconds, got {deadline_header!r}"
            ) from None
    return DynasorOptions(
        algorithm=algorithm, model=base, deadline_s=min(deadlines) if deadlines else None, settings=settings
    )


def _validate(entry: Entry[Any], values: dict[str, Any], from_suffix: Mapping[str, str]) -> Options:
    """The entry's options model over ``values``; 400 naming every refused key (module docs) and
    the model name of the keys its suffix set (``from_suffix``)."""
    try:
        settings: Options = entry.options.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            allowed = sorted((*_ANY, *entry.options.model_fields))
            raise ProxyError(
                f"unknown dynasor option(s) {unknown} for algorithm {entry.name!r}; allowed: {allowed}",
                param="dynasor",
            ) from None
        where = ["dynasor." + ".".join(str(part) for part in e["loc"]) for e in errors]
        messages = [
            f"{w}: {e['msg'][:1].lower()}{e['msg'][1:]}, got {_shown(repr(e['input']), 100)}"
            + _suffix_note(e["loc"], from_suffix)
            for w, e in zip(where, errors, strict=True)
        ]
        raise ProxyError("; ".join(messages), param=where[0]) from None
    return settings


def _suffix_note(loc: tuple[int | str, ...], from_suffix: Mapping[str, str]) -> str:
    model = from_suffix.get(str(loc[0])) if loc else None
    return "" if model is None else f" (set by the model suffix of {_shown(model)!r})"


def _seconds(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ProxyError(f"{where} must be a positive number of seconds, got {value!r}", param=where)
    return float(value)
