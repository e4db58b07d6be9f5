"""Final-answer extraction from a generated text, pluggable per task.

An :data:`Extractor` is any ``Callable[[str], str | None]``: it returns the answer as written (not
normalised) or None when the text holds none. Built-ins cover the usual formats; combine them with
:func:`first_of`, or get a task's chain from :func:`get_extractor`. Code, free text or tool calls
need their own extractor (and usually their own equivalence): pass any function.

**Cost.** Every built-in extractor runs in time linear in the length of the text, whatever it
holds (a sample is untrusted input: an unclosed ``\\boxed{`` repeated, a marker repeated with nothing
after it, long whitespace runs), and never raises for a ``str``. A 100 KB sample ending in a box
takes well under a millisecond; a hostile one of that size (no answer, thousands of markers) tens of
milliseconds at most: callers on an event loop that take large samples should extract in a thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Extractor = Callable[[str], str | None]

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\b|(?:final\s+)?answer\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_LAST_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?!\.\d))?|(?<![\w.])-?\.\d+"
)
_CODE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_BRACES = re.compile(r"[{}]")
_TOKEN = re.compile(r"[^\s$]+")
_NON_SPACE = re.compile(r"\S")
# The first sentence end ("." before whitespace or the end) or the end of a paragraph.
_SENTENCE_OR_PARAGRAPH_END = re.compile(r"\.(?=\s|$)|\n\n")
# Markup around an answer (``**``, ``$$``, ``$``, ``\\(`` ``\\)``, ``\\[`` ``\\]``, whitespace): the
# leading tokens may open, the trailing ones close.
_LEADING_MARKUP = ("**", "$$", "$", "\\(", "\\[")
_TRAILING_MARKUP = ("**", "$$", "\\)", "\\]")


def _matching_brace(text: str, open_index: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_index``, or -1 when it is never closed."""
    depth = 0
    for brace in _BRACES.finditer(text, open_index):
        depth += 1 if text[brace.start()] == "{" else -1
        if depth == 0:
            return brace.start()
    return -1


def _closing_braces(text: str) -> dict[int, int]:
    """The index of the ``}`` closing each ``{`` that is closed (one pass, a stack of open braces)."""
    closes: dict[int, int] = {}
    opened: list[int] = []
    for brace in _BRACES.finditer(text):
        i = brace.start()
        if text[i] == "{":
            opened.append(i)
        elif opened:
            closes[opened.pop()] = i
    return closes


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); ``\\boxed 5`` gives
    ``5``. A box that is never closed (a truncated generation) or empty is skipped and the one before
    it is used.
    """
    # Linear: the last box's brace is matched by a scan from it (usually a short one); if that box
    # is skipped, the braces of the whole text are matched once (not once per box: a text of
    # unclosed boxes would be quadratic). Every box skipped (empty, unclosed) spans text of its own.
    closes: dict[int, int] | None = None
    scanned = False
    n = len(text)
    for match in reversed(list(_BOXED.finditer(text))):
        i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "{":
            if not scanned:
                close, scanned = _matching_brace(text, i), True
            else:
                if closes is None:
                    closes = _closing_braces(text)
                close = closes.get(i, -1)
            content = text[i + 1 : close].strip() if close >= 0 else ""
        else:
            token = _TOKEN.match(text, i)
            content = token.group(0).rstrip(".,") if token else ""
        if content:
            return content
    return None


def extract_gsm8k(text: str) -> str | None:
    """What follows the last ``#### `` marker (GSM8K's reference format) on its line."""
    for match in reversed(list(_GSM8K.finditer(text))):
        content = match.group(1).strip().rstrip(".").strip()
        if content:
            return content
    return None


def _leading_markup_end(text: str, start: int, end: int) -> int:
    """Where the leading markup of ``text[start:end]`` ends (tokens taken greedily, in order)."""
    i = start
    while i < end:
        if text[i].isspace():
            i += 1
            continue
        for token in _LEADING_MARKUP:
            if text.startswith(token, i, end):
                i += len(token)
                break
        else:
            return i
    return i


def _trailing_markup_start(text: str, start: int) -> int:
    """The first index ``p >= start`` such that ``text[p:]`` is all trailing markup (``len(text)`` if none).

    ``ok[p]`` (``text[p:]`` is a sequence of trailing tokens) depends on ``ok[p + 1]`` and ``ok[p + 2]``
    only: the scan from the right stops at two failures in a row.
    """
    n = len(text)
    ok_1, ok_2 = True, False  # ok[p + 1], ok[p + 2] for p = n - 1
    first = n
    failures = 0
    for p in range(n - 1, start - 1, -1):
        char = text[p]
        ok = ((char == "$" or char.isspace()) and ok_1) or (text.startswith(_TRAILING_MARKUP, p) and ok_2)
        if ok:
            first, failures = p, 0
        else:
            failures += 1
            if failures == 2:
                break
        ok_1, ok_2 = ok, ok_1
    return first


def _is_markup(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is markup only (leading tokens, then trailing ones)."""
    i = _leading_markup_end(text, start, end)
    while i < end:
        if text[i] == "$" or text[i].isspace():
            i += 1
        elif text.startswith(_TRAILING_MARKUP, i, end):
            i += 2
        else:
            return False
    return True


def _clean(content: str) -> str:
    """``content`` without its outer markup (bold, math delimiters), a ``\\boxed{}`` in it unwrapped."""
    content = content.strip()
    start = _leading_markup_end(content, 0, len(content))
    content = content[start : _trailing_markup_start(content, start)] if start < len(content) else ""
    boxed = extract_boxed(content)
    return boxed if boxed is not None else content.strip()


def extract_answer_is(text: str) -> str | None:
    """The answer stated after the last "The answer is" / "Final answer:" (case-insensitive).

    Takes the rest of that sentence (or the next paragraph when the line ends right after the
    marker, as in "the answer is:" followed by display math), without markdown bold, math
    delimiters or a trailing full stop; a ``\\boxed{}`` inside it is unwrapped.
    """
    # Linear: no copy of the text after a marker; a marker skipped (nothing after it) only reads
    # markup up to its sentence end, which holds no other marker.
    n = len(text)
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        start = match.end()
        while start < n and text[start] in " \t:":
            start += 1
        line_end = text.find("\n", start)
        line_end = n if line_end < 0 else line_end
        if _is_markup(text, start, line_end):  # the answer is in the next paragraph
            first = _NON_SPACE.search(text, line_end)
            if first is None:
                continue
            end = _SENTENCE_OR_PARAGRAPH_END.search(text, first.start())
            stop = end.start() if end else n
            content = _clean(" ".join(text[first.start() : stop].split()))
        else:
            end = _SENTENCE_END.search(text, start, line_end)
            content = _clean(text[start : end.start() if end else line_end])
        if content:
            return content
    return None


def extract_choice(text: str, letters: str = "ABCDE") -> str | None:
    """A multiple-choice letter (uppercase, one of ``letters``), or None.

    In order of preference: a boxed letter (``\\boxed{B}``, ``\\boxed{(B)}``, ``\\boxed{\\text{B}}``);
    the last "answer is (B)" / "Answer: C" / "The answer is D" (also "option C"); then the last
    parenthesised letter "(B)". For ten-option tests pass ``letters="ABCDEFGHIJ"``
    (``functools.partial`` makes it an :data:`Extractor`).
    """
    ls = re.escape(letters)
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", boxed)
        if match := re.fullmatch(rf"\s*+\(?\s*+([{ls}])\s*\)?(?:[.:)\s].*)?", inner, re.DOTALL):
            return match.group(1)
    # Possessive whitespace (``\s*+``): the same matches, without trying every split of a long run.
    patterns = (
        rf"(?i:answer)(?:\s+(?i:is))?\s*+:?\s*+(?:(?i:option|choice)\s*+)?[*$(\s]*+([{ls}])(?![A-Za-z])",
        rf"(?i:option|choice)(?:\s+(?i:is))?\s*+:?\s*+\(?([{ls}])\)?(?![A-Za-z])",
        rf"\(([{ls}])\)",
    )
    for pattern in patterns:
        matches = re.findall(pattern, text)
        if matches:
            return str(matches[-1])
    return None


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (``-3``, ``1,234.5``, ``3/4``, ``.5``), as written."""
    matches = _LAST_NUMBER.findall(text)
    return str(matches[-1]) if matches else None


def extract_code_block(text: str) -> str | None:
    """Content of the last fenced code block (```` ```lang ... ``` ````), or None."""
    blocks = _CODE_BLOCK.findall(text)
    return str(blocks[-1]).strip("\n") if blocks else None


def first_of(*extractors: Extractor) -> Extractor:
    """An extractor that returns the first non-None answer of ``extractors``, tried in order."""

    def extract(text: str) -> str | None:
        for extractor in extractors:
            answer = extractor(text)
            if answer is not None:
                return answer
        return None

    return extract


_TASKS: dict[str, Extractor] = {
    "math": first_of(extract_boxed, extract_answer_is, extract_gsm8k, extract_last_number),
    "gsm8k": first_of(extract_gsm8k, extract_boxed, extract_answer_is, extract_last_number),
    "multiple_choice": extract_choice,
    "code": extract_code_block,
}


def get_extractor(task: str) -> Extractor:
    """The extractor chain for a task.

    - ``"math"``: last ``\\boxed{}``, else "The answer is ...", else ``#### N``, else the last number
      (MATH, AIME, SVAMP with Program-of-Thoughts comments, most chain-of-thought prompts);
    - ``"gsm8k"``: ``#### N`` first, then the same chain;
    - ``"multiple_choice"``: :func:`extract_choice` (letters A-E);
    - ``"code"``: the last fenced code block; its answers need an equivalence of your own (one that
      runs them, or ``ExactEquivalence(normalize=str.strip)`` to compare the text).
    """
    try:
        return _TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(_TASKS))}") from None
