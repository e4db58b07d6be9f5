"""The answer a probe reads from a partial reasoning text when no probe was recorded at its offset.

``probe_fallback="explicit"`` tries ``\\boxed{}``, "the answer is ...", GSM8K's ``#### N``; ``"math"``
adds the last number; ``"none"`` extracts nothing. An answer cut off by the end of the partial text
(an unclosed box, for instance) does not count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

__all__ = ["Extractor", "ProbeFallback", "extract_partial", "extractors"]

ProbeFallback = Literal["explicit", "math", "none"]

Extractor = Callable[[str], str | None]


def extractors(kind: ProbeFallback) -> list[Extractor]:
    """The extractors of ``probe_fallback=kind``, in the order they are tried."""
    if kind == "none":
        return []
    try:
        from ..certainty.answers import extract_answer_is, extract_boxed, extract_gsm8k, extract_last_number
    except ImportError:  # pragma: no cover - the answers package ships with this one
        return [_last_boxed]
    chain: list[Extractor] = [extract_boxed, extract_answer_is, extract_gsm8k]
    return [*chain, extract_last_number] if kind == "math" else chain


def _balanced(answer: str) -> bool:
    """No brace left open or closed too early: a partial text can end inside a box."""
    depth = 0
    for ch in answer:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def extract_partial(chain: Sequence[Extractor], text: str) -> str | None:
    """The first extractor's answer that is not cut off (``The answer is \\boxed{`` gives none)."""
    for extract in chain:
        answer = extract(text)
        if answer and _balanced(answer) and "\\boxed" not in answer:
            return answer
    return None


def _last_boxed(text: str) -> str | None:
    """The content of the last closed ``\\boxed{...}`` (fallback extractor)."""
    at = text.rfind("\\boxed{")
    while at >= 0:
        depth, i = 0, at + len("\\boxed{")
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                if depth == 0:
                    content = text[i:j].strip()
                    if content:
                        return content
                    break
                depth -= 1
        at = text.rfind("\\boxed{", 0, at)
    return None
