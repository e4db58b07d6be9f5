"""The replay engine's own token ids: one per distinct piece (or unit of text), issued on first sight."""

from __future__ import annotations

from collections.abc import Sequence

from ._matching import NoMatch
from ._pieces import split_units

__all__ = ["Vocabulary"]


class Vocabulary:
    """Ids for pieces: assigned on first sight, stable for the server's lifetime."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []

    def __len__(self) -> int:
        return len(self._pieces)

    def id(self, piece: str) -> int:
        found = self._ids.get(piece)
        if found is None:
            found = self._ids[piece] = len(self._pieces)
            self._pieces.append(piece)
        return found

    def ids(self, pieces: Sequence[str]) -> list[int]:
        return [self.id(p) for p in pieces]

    def tokenize(self, text: str) -> list[int]:
        """``text`` as ids of its units (see :func:`._pieces.split_units`)."""
        return self.ids(split_units(text))

    def decode(self, ids: Sequence[int]) -> str:
        pieces = self._pieces
        bad = next((i for i in ids if not isinstance(i, int) or not 0 <= i < len(pieces)), None)
        if bad is not None:
            raise NoMatch(
                f"token id {bad!r} was never issued by this replay server: token-id prompts must use ids "
                "from its /tokenize or from generated token_ids"
            )
        return "".join([pieces[i] for i in ids])
