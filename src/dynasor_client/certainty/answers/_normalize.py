"""Normalisation of a final answer to a canonical string, and its numeric value when it has one.

:func:`normalize_answer` turns the many ways a model writes one answer into one string, so that
equal answers usually compare equal as plain strings (the fast path of clustering). It:

- strips math delimiters (``$..$``, ``\\(..\\)``, ``\\[..\\]``) and a ``\\boxed{}``/``\\fbox{}`` wrapper;
- rewrites ``\\dfrac``/``\\tfrac`` to ``\\frac`` (``\\frac12`` to ``\\frac{1}{2}``), drops
  ``\\left``/``\\right``, ``\\displaystyle`` and the spacing commands ``\\!``, ``\\,``, ``\\;``, ``\\:``;
- drops degrees (``^\\circ``, ``^{\\circ}``, ``°``, ``\\degree``), currency signs (``$``, ``\\$``,
  ``€``, ``£``) and thousands separators (``10{,}000``, ``1,234,567``, ``1\\,000``);
- unwraps ``\\text{}``, ``\\mbox{}``, ``\\mathrm{}``, ``\\textbf{}`` ... and drops trailing units and
  words after a number (``18 dollars``, ``5\\text{ cm}^2``, ``12 apples``; single-letter words only
  when they were written inside ``\\text{}``, so ``4 t`` stays algebra);
- drops a leading ``x =`` (one variable, one ``=``), a trailing full stop, and all spaces (a space
  between a LaTeX command and a letter is kept, so ``\\pi r`` does not become ``\\pir``);
- turns a parenthesised capital letter into the letter (``(B)`` -> ``B``, multiple choice);
- writes plain decimals canonically (``37.50`` -> ``37.5``, ``+5`` -> ``5``, ``.5`` -> ``0.5``).

**Percentages.** ``50\\%``, ``50%``, ``50 percent`` and ``50 per cent`` all normalise to ``50%``. The
number in front of the sign is kept *as written*: ``50%`` is never converted to ``0.5``, so it can
never be equated with ``0.5`` or ``1/2``. (Whether ``50%`` equals a bare ``50`` is the equivalence's
choice: see :class:`~.MathEquivalence`'s ``strict_percent``.)

:func:`parse_number` gives the value of a normalised answer that is a plain number: an integer,
decimal, ``a/b``, ``\\frac{a}{b}`` or a mixed number ``1\\frac{1}{4}`` (= 5/4, as MATH writes them).

**Bounds.** Answers come from untrusted samples. An answer longer than :data:`MAX_ANSWER_CHARS`
(1,000 characters once stripped of surrounding whitespace) is too long to be a plausible final
answer: :func:`normalize_answer` returns it stripped and otherwise unprocessed (so equal long texts
still compare equal, and nothing in it can make normalisation slow: ``\\text{`` nested 20,000 deep
costs one pass), and :func:`parse_number` gives None for it (a 10,000-digit answer is compared as
text, and Python's limit on converting long digit strings to int is never reached). Neither function
raises for any ``str``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

MAX_ANSWER_CHARS = 1000
"""Longest answer (stripped) that is normalised and parsed; a longer one is kept as its text."""
_MAX_UNIT_SCAN = 300
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_WRAPPERS = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_CMD = re.compile(
    r"\\(?:text|textrm|textbf|textit|textsf|texttt|mbox|mathrm|mathbf|mathit|mathsf|boldsymbol)\s*\{"
)
_TRAILING_TEXT_UNIT = re.compile(
    r"(?P<keep>.*\d[^\\]*?)\s*\\(?:text|textrm|mbox|mathrm)\s*\{\s*(?P<unit>[A-Za-z][A-Za-z .'/-]*)\}"
    r"\s*(?:\^\s*\{?\s*[23]\s*\}?|[²³])?\s*$"
)
_TRAILING_WORDS = re.compile(
    r"(?P<keep>(?:[^A-Za-z\\]|\\[A-Za-z]+)*\d(?:[^A-Za-z\\]|\\[A-Za-z]+)*?)\s+"
    r"(?P<words>[A-Za-z]{2,}(?:[ ./'-]+[A-Za-z]+)*\.?)\s*(?:\^\s*\{?\s*[23]\s*\}?|[²³])?"
)
_LEADING_VARIABLE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*(?=\S)")
_PERCENT = re.compile(
    r"\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*)?(?:%|per\s*cent|percent)\s*\}?\s*\.?\s*$", re.IGNORECASE
)
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![A-Za-z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])\.?")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACE_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_CHOICE = re.compile(r"\([A-Z]\)")
_COMMAND_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_FRAC_SHORT = (
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\sqrt\s*(\d+)"), r"\\sqrt{\1}"),
)
_SIMPLE_REPLACEMENTS = (
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\dbinom", "\\binom"),
    ("\\tbinom", "\\binom"),
    ("\\displaystyle", ""),
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\:", ""),
    ("{,}", ""),
    ("\\$", ""),
    ("$", ""),
    ("€", ""),
    ("£", ""),
    ("¥", ""),
    ("\\ ", " "),
    ("~", " "),
)


def _matching_brace(text: str, open_index: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_index``, or -1 when it is never closed."""
    depth = 0
    for i in range(open_index, len(text)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _strip_delimiters(s: str) -> str:
    changed = True
    while changed:
        changed = False
        s = s.strip()
        for left, right in _DELIMITERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)]
                changed = True
        match = _WRAPPERS.match(s)
        if match and _matching_brace(s, match.end() - 1) == len(s) - 1:
            s = s[match.end() : -1]
            changed = True
    return s


def _unwrap_text(s: str) -> str:
    """``\\text{abc}`` -> `` abc `` (nested braces allowed); an unclosed one is left as it is."""
    while match := _TEXT_CMD.search(s):
        close = _matching_brace(s, match.end() - 1)
        if close < 0:
            break
        s = f"{s[: match.start()]} {s[match.end() : close]} {s[close + 1 :]}"
    return s


def _canonical_decimal(s: str) -> str:
    """``+007.50`` -> ``7.5``, ``-0.0`` -> ``0``, ``.5`` -> ``0.5`` (exact: no float round trip)."""
    sign = "-" if s.startswith("-") else ""
    whole, _, frac = s.lstrip("+-").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    text = f"{whole}.{frac}" if frac else whole
    return "0" if text == "0" else sign + text


def _remove_spaces(s: str) -> str:
    s = _COMMAND_SPACE.sub(lambda m: m.group(1) + "\x00", s)
    return "".join(s.split()).replace("\x00", " ")


def _normalize(text: str) -> str:
    s = text.strip()
    if _PLAIN_NUMBER.fullmatch(s):
        return _canonical_decimal(s)
    s = _strip_delimiters(s)
    for old, new in _SIMPLE_REPLACEMENTS:
        s = s.replace(old, new)
    s = _strip_delimiters(_LEFT_RIGHT.sub("", s))
    s = _DEGREES.sub("", s)
    percent = False
    s = s.replace("\\%", "%")
    if (match := _PERCENT.search(s)) and match.start() > 0:
        s, percent = s[: match.start()], True
    short = len(s) <= _MAX_UNIT_SCAN  # the unit patterns are quadratic: answers are short, essays skip
    if short and (match := _TRAILING_TEXT_UNIT.match(s)):
        s = match.group("keep")
    s = _unwrap_text(s).strip()
    if short and (match := _TRAILING_WORDS.fullmatch(s)):
        s = match.group("keep").strip()
    if s.count("=") == 1 and (match := _LEADING_VARIABLE.match(s)):
        s = s[match.end() :]
    s = s.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(s) or _SPACE_THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    for pattern, replacement in _FRAC_SHORT:
        s = pattern.sub(replacement, s)
    s = _remove_spaces(s)
    if _CHOICE.fullmatch(s):  # "(B)" -> "B"
        s = s[1]
    if _PLAIN_NUMBER.fullmatch(s):
        s = _canonical_decimal(s)
    return f"{s}%" if percent else s


_normalize_cached = lru_cache(maxsize=65536)(_normalize)


def normalize_answer(text: str) -> str:
    """The canonical form of a final answer (see the module docs for every rule).

    An answer longer than :data:`MAX_ANSWER_CHARS` once stripped is returned stripped, unprocessed
    (and not cached): see "Bounds" in the module docs.

    >>> normalize_answer("\\\\$1{,}000.50")
    '1000.5'
    >>> normalize_answer("50\\\\%") == normalize_answer("50 percent") == "50%"
    True
    """
    if len(text) > MAX_ANSWER_CHARS:
        stripped = text.strip()
        if len(stripped) > MAX_ANSWER_CHARS:
            return stripped
    return _normalize_cached(text)


@dataclass(frozen=True, slots=True)
class Number:
    """The value of a normalised answer that is a plain number.

    ``exact`` is the exact rational value as written; ``percent`` says a percent sign followed it
    (the value is the number as written, ``50%`` has value 50).
    """

    exact: int | Fraction  # an int whenever the value is an integer (cheaper to hash and compare)
    percent: bool

    @property
    def is_integer(self) -> bool:
        return isinstance(self.exact, int)


_INT = r"\d+"
_DEC = r"(?:\d+\.?\d*|\.\d+)"
_FRACTION_FORMS = (
    re.compile(rf"(?P<sign>-?)(?P<num>{_DEC})/(?P<den>{_DEC})"),
    re.compile(rf"(?P<sign>-?)\\frac\{{(?P<num>-?{_DEC})\}}\{{(?P<den>-?{_DEC})\}}"),
    re.compile(rf"(?P<sign>-?)(?P<whole>{_INT})\\frac\{{(?P<num>{_INT})\}}\{{(?P<den>{_INT})\}}"),
)
_INTEGER = re.compile(r"-?\d+")
_SCIENTIFIC = re.compile(rf"-?{_DEC}[eE][-+]?\d{{1,4}}")


def _number(value: Fraction, percent: bool) -> Number:
    return Number(value.numerator if value.denominator == 1 else value, percent)


def _parse_number(normalized: str) -> Number | None:
    try:
        return _parse_bounded(normalized)
    except (ValueError, ZeroDivisionError):  # e.g. a lowered sys.set_int_max_str_digits
        return None


def _parse_bounded(normalized: str) -> Number | None:
    s, percent = (normalized[:-1], True) if normalized.endswith("%") else (normalized, False)
    if _INTEGER.fullmatch(s):
        return Number(int(s), percent)
    if _PLAIN_NUMBER.fullmatch(s) or _SCIENTIFIC.fullmatch(s):
        return _number(Fraction(s), percent)
    for pattern in _FRACTION_FORMS:
        if match := pattern.fullmatch(s):
            den = Fraction(match["den"])
            if den == 0:
                return None
            value = Fraction(match["num"]) / den + int(match.groupdict().get("whole") or 0)
            return _number(-value if match["sign"] else value, percent)
    return None


_parse_number_cached = lru_cache(maxsize=65536)(_parse_number)


def parse_number(normalized: str) -> Number | None:
    """The numeric value of an answer already passed through :func:`normalize_answer`, or None.

    Accepts integers, decimals, scientific notation, ``a/b``, ``\\frac{a}{b}`` and mixed numbers
    ``N\\frac{a}{b}`` (= N + a/b), each optionally followed by ``%``; nothing symbolic (``\\pi``,
    ``\\sqrt{2}``: those go to the symbolic check). None too for an answer longer than
    :data:`MAX_ANSWER_CHARS` (it is compared as text); never raises.
    """
    if len(normalized) > MAX_ANSWER_CHARS:
        return None
    return _parse_number_cached(normalized)
