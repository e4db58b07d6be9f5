"""Final-answer extraction from a generated text, pluggable per task.

An :data:`Extractor` is any ``Callable[[str], str | None]``: it returns the answer as written (not
normalised) or None when the text holds none. Built-ins cover the usual formats; combine them with
:func:`first_of`, or get a task's chain from :func:`get_extractor`. Code, free text or tool calls
need their own extractor (and usually their own equivalence): pass any function.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._normalize import _matching_brace

Extractor = Callable[[str], str | None]

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\b|(?:final\s+)?answer\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_LAST_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?!\.\d))?|(?<![\w.])-?\.\d+"
)
_CODE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_OUTER_MARKUP = re.compile(r"^(?:\*\*|\$\$|\$|\\\(|\\\[|\s)+|(?:\*\*|\$\$|\$|\\\)|\\\]|\s)+$")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); ``\\boxed 5`` gives
    ``5``. A box that is never closed (a truncated generation) or empty is skipped and the one before
    it is used.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            close = _matching_brace(text, i)
            content = text[i + 1 : close].strip() if close >= 0 else ""
        else:
            token = re.match(r"[^\s$]+", text[i:])
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


def _clean(content: str) -> str:
    content = _OUTER_MARKUP.sub("", content.strip())
    boxed = extract_boxed(content)
    return boxed if boxed is not None else content.strip()


def extract_answer_is(text: str) -> str | None:
    """The answer stated after the last "The answer is" / "Final answer:" (case-insensitive).

    Takes the rest of that sentence (or the next paragraph when the line ends right after the
    marker, as in "the answer is:" followed by display math), without markdown bold, math
    delimiters or a trailing full stop; a ``\\boxed{}`` inside it is unwrapped.
    """
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        rest = text[match.end() :].lstrip(" \t:")
        line, _, after = rest.partition("\n")
        if not _clean(line):
            line = " ".join(after.strip().split("\n\n", 1)[0].split())
        end = _SENTENCE_END.search(line)
        content = _clean(line[: end.start()] if end else line)
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
        if match := re.fullmatch(rf"\s*\(?\s*([{ls}])\s*\)?(?:[.:)\s].*)?", inner, re.DOTALL):
            return match.group(1)
    patterns = (
        rf"(?i:answer)(?:\s+(?i:is))?\s*:?\s*(?:(?i:option|choice)\s*)?[*$(\s]*([{ls}])(?![A-Za-z])",
        rf"(?i:option|choice)(?:\s+(?i:is))?\s*:?\s*\(?([{ls}])\)?(?![A-Za-z])",
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
