"""Which recorded question a prompt asks, and which recorded sample its generated prefix continues.

**The question rule.** A request's text (the completions prompt; for chat, the message contents in
order, joined by newlines) asks recorded question ``q`` when ``q``'s text occurs in it as a substring
after both are whitespace-normalised (every run of whitespace read as one space; the question's own
leading and trailing whitespace dropped). When several questions occur, the longest one wins (ties:
the one occurring first, then the first in the traces file); the question's *first* occurrence
counts. Questions with empty text can never be matched.

Finding the questions is fast for thousands of questions and long prompts: every 24-character window
of every normalised question is indexed, and the prompt is looked up at every 8th position only; a
question of at least 31 characters always has one of its windows at such a position, and shorter
questions are looked for directly.

**The prefix rule.** The text after the question (its *remainder*) is template text (e.g.
``"<|im_start|>assistant\\n"``) followed by the *generated prefix*: the longest suffix of the remainder
that is a prefix of one of the question's recorded samples *ending at a piece boundary*
(:mod:`._pieces`). No such suffix: the prefix is empty (a fresh sample). Prefixes at least as long
as the sample's opening (its first piece boundary at or after 32 characters, or all of it) are found
by looking for that opening in the remainder; such a prefix may also end inside a piece (text cut at
a stop string), which :mod:`._engine` continues with the rest of the piece. Shorter prefixes must
end at a piece boundary. When the remainder contains the opening of a sample but no suffix of it
continues any sample, the prompt continues no recorded sample and is refused (:class:`NoMatch`)
rather than silently served a fresh sample. Every sample whose text starts with the prefix is a
candidate (samples can share a prefix); :mod:`._engine` chooses among them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._exceptions import DynasorError
from ._pieces import Pieces

__all__ = ["NoMatch", "PrefixMatch", "QuestionIndex", "SampleIndex", "normalize_whitespace"]

_WHITESPACE = re.compile(r"\s+")
_GRAM = 24
_STRIDE = 8
_MIN_INDEXED = _GRAM + _STRIDE - 1
_ANCHOR_CHARS = 32


class NoMatch(DynasorError, ValueError):
    """The request's text asks no recorded question, or continues none of its samples."""


def normalize_whitespace(text: str) -> str:
    """Every run of whitespace as one space."""
    return _WHITESPACE.sub(" ", text)


@dataclass(frozen=True, slots=True)
class QuestionSpan:
    """Where a recorded question occurs in a request's text (character offsets in the original)."""

    question: int
    start: int
    end: int


class QuestionIndex:
    """Finds the recorded question a text asks (the question rule of the module docs)."""

    def __init__(self, questions: Sequence[str]) -> None:
        self._normalized = [normalize_whitespace(q).strip() for q in questions]
        self._patterns: dict[int, re.Pattern[str]] = {}
        self._grams: dict[str, list[tuple[int, int]]] = {}
        self._short: list[int] = []
        for index, text in enumerate(self._normalized):
            if not text:
                continue
            if len(text) < _MIN_INDEXED:
                self._short.append(index)
                continue
            for offset in range(len(text) - _GRAM + 1):
                self._grams.setdefault(text[offset : offset + _GRAM], []).append((index, offset))

    def __len__(self) -> int:
        return len(self._normalized)

    def find(self, text: str) -> QuestionSpan | None:
        """The question ``text`` asks and where, or None when it asks none."""
        norm = normalize_whitespace(text)
        best: tuple[int, int, int] | None = None  # (-length, start in norm, question)
        grams, questions = self._grams, self._normalized
        seen: set[tuple[int, int]] = set()
        for position in range(0, len(norm) - _GRAM + 1, _STRIDE):
            hits = grams.get(norm[position : position + _GRAM])
            if hits is None:
                continue
            for index, offset in hits:
                start = position - offset
                if start < 0 or (index, start) in seen:
                    continue
                seen.add((index, start))
                question = questions[index]
                if norm.startswith(question, start):
                    key = (-len(question), start, index)
                    if best is None or key < best:
                        best = key
        for index in self._short:
            start = norm.find(questions[index])
            if start >= 0:
                key = (-len(questions[index]), start, index)
                if best is None or key < best:
                    best = key
        if best is None:
            return None
        index = best[2]
        match = self._pattern(index).search(text)
        if match is None:  # pragma: no cover - normalisation and the pattern agree
            return None
        return QuestionSpan(index, match.start(), match.end())

    def _pattern(self, index: int) -> re.Pattern[str]:
        pattern = self._patterns.get(index)
        if pattern is None:
            words = self._normalized[index].split(" ")
            pattern = re.compile(r"\s+".join(re.escape(w) for w in words))
            self._patterns[index] = pattern
        return pattern


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The generated prefix found at the end of a remainder.

    ``chars`` is its length (0: no prefix, a fresh sample); ``candidates`` the ``(sample, k)`` pairs
    it continues, in sample order (empty when ``chars == 0``), ``k`` being the number of the
    sample's pieces wholly inside the prefix (the prefix ends inside piece ``k`` when
    ``offsets[k] < chars``).
    """

    chars: int
    candidates: tuple[tuple[int, int], ...]


class SampleIndex:
    """The recorded samples of one question, for the prefix rule of the module docs."""

    def __init__(self, count: int, pieces: Callable[[int], Pieces]) -> None:
        self._count = count
        self._pieces = pieces
        self._anchors: dict[str, list[int]] = {}
        # Prefixes shorter than their sample's anchor, at piece boundaries: text -> [(sample, k)].
        self._short: dict[str, list[tuple[int, int]]] = {}
        for sample in range(count):
            p = pieces(sample)
            anchor = min(bisect.bisect_left(p.offsets, _ANCHOR_CHARS), len(p.offsets) - 1)
            if p.text:
                self._anchors.setdefault(p.prefix(anchor), []).append(sample)
            for k in range(1, anchor):
                if p.offsets[k] > p.offsets[k - 1]:
                    self._short.setdefault(p.prefix(k), []).append((sample, k))
        self._short_lengths = sorted({len(text) for text in self._short}, reverse=True)

    def find(self, remainder: str) -> PrefixMatch:
        """The generated prefix at the end of ``remainder`` (NoMatch when it continues no sample)."""
        total = len(remainder)
        found: dict[int, tuple[int, int]] = {}  # sample -> (chars, pieces)
        anchored = False
        for anchor, samples in self._anchors.items():
            at = remainder.find(anchor)
            if at < 0:
                continue
            anchored = True
            todo = list(samples)
            while at >= 0 and todo:
                length = total - at
                still = []
                for sample in todo:
                    p = self._pieces(sample)
                    if length <= len(p.text) and remainder.startswith(p.text[:length], at):
                        found[sample] = (length, bisect.bisect_right(p.offsets, length) - 1)
                    else:
                        still.append(sample)
                todo = still
                at = remainder.find(anchor, at + 1)
        if not found:
            if anchored:
                raise NoMatch(
                    "the text after the question starts like a recorded sample but does not continue "
                    "any recorded sample up to a token boundary (edited or foreign text?)"
                )
            found = self._short_prefixes(remainder)
        if not found:
            return PrefixMatch(0, ())
        longest = max(chars for chars, _ in found.values())
        return PrefixMatch(
            longest, tuple((s, k) for s, (chars, k) in sorted(found.items()) if chars == longest)
        )

    def _short_prefixes(self, remainder: str) -> dict[int, tuple[int, int]]:
        """The longest prefix shorter than its sample's anchor that ends the remainder."""
        for length in self._short_lengths:
            if length <= len(remainder):
                hits = self._short.get(remainder[-length:])
                if hits:
                    return {sample: (length, k) for sample, k in hits}
        return {}
