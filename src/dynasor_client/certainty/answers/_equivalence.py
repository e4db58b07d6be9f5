"""When two answers are the same answer.

An :class:`Equivalence` is any ``(a, b) -> bool`` callable. One that also has a ``key(answer) -> str``
method (:class:`Keyed`) lets clustering skip the pairwise check for answers with equal keys.

:class:`MathEquivalence` decides in three steps, cheapest first:

1. **exact**: the normalised strings are equal (:func:`~.normalize_answer`);
2. **numeric**: both are plain numbers (:func:`~.parse_number`: ``1/2``, ``0.5`` and ``\\frac{1}{2}``
   are equal). Two integers are compared exactly; otherwise with relative tolerance ``rel_tol``
   (``1e-6``: ``9999\\frac{6}{7}`` equals ``9999.857142857143``). When both are numbers this step is
   final — the symbolic step never overrides it;
3. **symbolic**: math-verify in a worker process under a hard timeout (:class:`~.SymbolicChecker`);
   a timeout is "not equal". Skipped when math-verify is not installed, when ``symbolic=False``,
   and for answers that are plain words (``Monday``, ``B``: sympy would read them as products of
   symbols, so ``ab`` would equal ``ba``), longer than 300 characters, or JSON-like (a ``"`` or
   ``({``: tool calls such as ``get_weather({"city":"Paris"})``, which math-verify would spend its
   whole timeout on).

**Percentages** are compared as written, never converted: ``50%`` equals ``50%`` and ``50 percent``
and never ``0.5`` or ``1/2``. A percent answer also equals the bare number (``50%`` == ``50``,
answers often drop the sign) unless ``strict_percent=True``, where it equals only another percent.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol, runtime_checkable

from ._normalize import Number, normalize_answer, parse_number
from ._symbolic import SymbolicChecker

_PLAIN_WORDS = re.compile(r"[A-Za-z]+(?:[ '-][A-Za-z]+)*")
_MAX_SYMBOLIC_LEN = 300


class Equivalence(Protocol):
    """Decides whether two answers (as extracted, not normalised) are the same answer."""

    def __call__(self, a: str, b: str) -> bool: ...


@runtime_checkable
class Keyed(Protocol):
    """An equivalence with a canonical key: answers with equal keys are always equivalent."""

    def __call__(self, a: str, b: str) -> bool: ...

    def key(self, answer: str) -> str: ...


class ExactEquivalence:
    """Equal after ``normalize`` (default :func:`~.normalize_answer`; ``str.strip`` for code)."""

    def __init__(self, normalize: Callable[[str], str] = normalize_answer) -> None:
        self.normalize = normalize

    def key(self, answer: str) -> str:
        return self.normalize(answer)

    def __call__(self, a: str, b: str) -> bool:
        return self.normalize(a) == self.normalize(b)

    def __repr__(self) -> str:
        return f"ExactEquivalence(normalize={getattr(self.normalize, '__name__', self.normalize)!r})"


class MathEquivalence:
    """Exact, then numeric, then symbolic equality of math answers (see the module docs).

    Args:
        rel_tol: relative tolerance of the numeric step (not used when both are integers).
        symbolic: whether to use math-verify when the cheaper steps cannot decide.
        timeout_s: hard limit of one symbolic check.
        strict_percent: a percent answer equals only another percent answer.
        max_workers: symbolic worker processes at most (started on first need).

    Call :meth:`close` (or use it as a context manager) to stop the symbolic workers; they are
    also stopped when the object is garbage-collected or the interpreter exits.
    """

    def __init__(
        self,
        rel_tol: float = 1e-6,
        *,
        symbolic: bool = True,
        timeout_s: float = 1.0,
        strict_percent: bool = False,
        max_workers: int = 2,
    ) -> None:
        if rel_tol < 0:
            raise ValueError("rel_tol must be >= 0")
        self.rel_tol = rel_tol
        self.symbolic = symbolic
        self.timeout_s = timeout_s
        self.strict_percent = strict_percent
        self._checker = SymbolicChecker(timeout_s, max_workers=max_workers) if symbolic else None

    @property
    def checker(self) -> SymbolicChecker | None:
        """The symbolic checker (None when ``symbolic=False``)."""
        return self._checker

    def key(self, answer: str) -> str:
        return normalize_answer(answer)

    def __call__(self, a: str, b: str) -> bool:
        return self.equal_normalized(normalize_answer(a), normalize_answer(b))

    def equal_normalized(self, a: str, b: str) -> bool:
        """The same decision for two answers already passed through :func:`~.normalize_answer`."""
        if a == b:
            return True
        num_a, num_b = parse_number(a), parse_number(b)
        if num_a is not None and num_b is not None:
            return self._numbers_equal(num_a, num_b)
        if self._checker is None or not a or not b:
            return False
        pct_a, pct_b = a.endswith("%"), b.endswith("%")
        if self.strict_percent and pct_a != pct_b:
            return False
        a, b = a.removesuffix("%"), b.removesuffix("%")
        if a == b:
            return True
        if _unsuitable_for_symbolic(a) or _unsuitable_for_symbolic(b):
            return False
        return self._checker(a, b)

    def _number_id(self, number: Number) -> tuple[int | Fraction, bool]:
        """Numbers with equal ids are always equal under this equivalence."""
        return number.exact, number.percent and self.strict_percent

    def _numbers_equal(self, a: Number, b: Number) -> bool:
        if self.strict_percent and a.percent != b.percent:
            return False
        if a.exact == b.exact:
            return True
        if a.is_integer and b.is_integer:
            return False
        try:
            return math.isclose(float(a.exact), float(b.exact), rel_tol=self.rel_tol, abs_tol=0.0)
        except OverflowError:
            return False

    def close(self) -> None:
        """Stops the symbolic worker processes (numeric and exact checks keep working)."""
        if self._checker is not None:
            self._checker.close()

    def __enter__(self) -> MathEquivalence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MathEquivalence(rel_tol={self.rel_tol}, symbolic={self.symbolic}, "
            f"timeout_s={self.timeout_s}, strict_percent={self.strict_percent})"
        )


def _unsuitable_for_symbolic(answer: str) -> bool:
    return (
        len(answer) > _MAX_SYMBOLIC_LEN
        or _PLAIN_WORDS.fullmatch(answer) is not None
        or '"' in answer
        or "({" in answer
    )


_default: MathEquivalence | None = None
_default_lock = threading.Lock()


def default_equivalence() -> MathEquivalence:
    """The shared :class:`MathEquivalence` used when no equivalence is given (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathEquivalence()
        return _default
