"""Token pieces: a recorded text split deterministically into exactly its recorded number of tokens.

The replay engine has no tokenizer. It serves each recorded sample as ``num_tokens`` *pieces* whose
concatenation is the sample's text, exactly, so token counts, ``max_tokens`` cuts and prefix matching
are exact without the original tokenizer. The split (:func:`split_pieces`) is:

1. Cut the text into *units* with the regex ``\\s*(?:\\w+|[^\\w\\s])|\\s+``: a word, or one
   punctuation character, each with the whitespace before it; whitespace at the very end is a unit
   of its own. The units concatenate to the text.
2. More units than tokens: merge adjacent units evenly (piece ``k`` of ``n`` holds units
   ``floor(k*U/n)`` to ``floor((k+1)*U/n)``).
3. Fewer units than tokens: split units by characters. One part at a time goes to the unit whose
   parts are longest (its length over its parts; the first unit among equals) until there are
   ``num_tokens`` parts or every part is one character; a unit of ``m`` parts is cut into ``m`` runs
   of characters at ``floor(k * len / m)``.
4. Still fewer (``num_tokens`` > characters): pad with empty pieces at the end.

A sample that recorded its tokens' text (``tokens``: one per token, concatenating to its text) is
served as those tokens instead (:meth:`Pieces.of_tokens`), so a replayed token is the recorded
token and its recorded top-k alternatives are alternatives to it.

A text with ``num_tokens == 0`` but some characters is served as one piece (recorded traces never
have one). Pieces of the same text and count are always the same; they are cached per sample.

Replies that are not recorded (a probe's answer and closing brace) count one token per unit
(:func:`count_units`); text whose token count is unknown (chat-template text, the probe suffix, a
question without a recorded ``prompt_tokens``) is estimated as ``ceil(characters / 4)``
(:func:`estimate_tokens`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import re
from dataclasses import dataclass, field

__all__ = ["Pieces", "count_units", "estimate_tokens", "split_pieces", "split_units"]

_UNIT = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def split_units(text: str) -> list[str]:
    """``text`` cut into units (a word or a punctuation mark with its leading whitespace)."""
    return _UNIT.findall(text)


def count_units(text: str) -> int:
    """How many tokens an unrecorded reply costs: its number of units."""
    return sum(1 for _ in _UNIT.finditer(text))


def estimate_tokens(text: str) -> int:
    """Estimated tokens of text whose count was not recorded: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / 4)


def split_pieces(text: str, num_tokens: int) -> tuple[str, ...]:
    """``text`` as exactly ``num_tokens`` pieces (see the module docs); ``"".join`` gives it back."""
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if num_tokens == 0:
        return (text,) if text else ()
    units = split_units(text)
    count = len(units)
    if count == num_tokens:
        return tuple(units)
    if count > num_tokens:
        bounds = [k * count // num_tokens for k in range(num_tokens + 1)]
        return tuple("".join(units[bounds[k] : bounds[k + 1]]) for k in range(num_tokens))
    return tuple(_split_longest(units, num_tokens))


def _split_longest(units: list[str], num_tokens: int) -> list[str]:
    # Give one more part at a time to the unit whose parts are longest (len / parts; the first unit
    # among equals) until there are num_tokens parts or every part is one character.
    parts = [1] * len(units)
    heap = [(-float(len(u)), i) for i, u in enumerate(units) if len(u) > 1]
    heapq.heapify(heap)
    total = len(units)
    while total < num_tokens and heap:
        _, i = heapq.heappop(heap)
        parts[i] += 1
        total += 1
        if parts[i] < len(units[i]):
            heapq.heappush(heap, (-len(units[i]) / parts[i], i))
    pieces: list[str] = []
    for unit, m in zip(units, parts, strict=True):
        if m == 1:
            pieces.append(unit)
            continue
        size = len(unit)
        pieces.extend(unit[k * size // m : (k + 1) * size // m] for k in range(m))
    pieces.extend("" for _ in range(num_tokens - len(pieces)))
    return pieces


@dataclass(frozen=True, slots=True)
class Pieces:
    """A text as token pieces, with the character offset after each piece.

    ``offsets[k]`` is the length of the first ``k`` pieces (``offsets[0] == 0``,
    ``offsets[-1] == len(text)``).
    """

    text: str
    pieces: tuple[str, ...]
    offsets: tuple[int, ...] = field(repr=False)

    @classmethod
    def of(cls, text: str, num_tokens: int) -> Pieces:
        pieces = split_pieces(text, num_tokens)
        return cls(text, pieces, (0, *itertools.accumulate(map(len, pieces))))

    @classmethod
    def of_tokens(cls, text: str, num_tokens: int, tokens: tuple[str, ...] | None) -> Pieces:
        """The recorded ``tokens`` when they are ``num_tokens`` strings making ``text``, else :meth:`of`."""
        if tokens is None or len(tokens) != num_tokens or "".join(tokens) != text:
            return cls.of(text, num_tokens)
        return cls(text, tokens, (0, *itertools.accumulate(map(len, tokens))))

    def __len__(self) -> int:
        return len(self.pieces)

    def prefix(self, k: int) -> str:
        """The text of the first ``k`` pieces."""
        return self.text[: self.offsets[k]]

    def boundary(self, chars: int) -> int | None:
        """The smallest ``k`` whose first ``k`` pieces are ``chars`` characters long (None: mid-piece)."""
        k = bisect.bisect_left(self.offsets, chars)
        return k if k < len(self.offsets) and self.offsets[k] == chars else None
