"""Answers to class labels: equivalence classes of a program's answers, and the majority vote.

Labels are numbered 0, 1, 2, ... in order of first appearance; a missing answer (None) gets
``NONE`` (-1) and never wins a vote. A new answer joins the first class whose representative (its
first answer) is equivalent to it. With a :class:`~.Keyed` equivalence (the default
:class:`~.MathEquivalence` is one) answers with equal keys share a label with no pairwise check. With
a :class:`~.MathEquivalence`, numbers of equal value also share a label without one, and an integer
is never compared pairwise with a class of another integer (they cannot be equal), so plain numbers
cluster in microseconds; the symbolic step only runs for answers the numeric step cannot decide.

With an equivalence that is not transitive (a similarity threshold, a tolerance) the classes depend
on the order of the answers: each answer is compared with representatives only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

from .._observations import NONE
from ._equivalence import Equivalence, Keyed, MathEquivalence, default_equivalence
from ._normalize import parse_number


def _identity(answer: str) -> str:
    return answer


class AnswerClusters:
    """Incremental equivalence classes of one program's answers (for live programs).

    >>> clusters = AnswerClusters()
    >>> [clusters.add(a) for a in ["1/2", "0.5", None, "3", "\\\\frac{1}{2}"]]
    [0, 0, -1, 1, 0]
    >>> clusters.majority()
    (0, '1/2')
    """

    def __init__(self, equivalence: Equivalence | None = None) -> None:
        self.equivalence: Equivalence = equivalence if equivalence is not None else default_equivalence()
        self._key: Callable[[str], str] = (
            self.equivalence.key if isinstance(self.equivalence, Keyed) else _identity
        )
        self._labels: list[int] = []
        self._representatives: list[str] = []
        self._counts: list[int] = []
        self._rep_keys: list[str] = []
        self._label_of_key: dict[str, int] = {}
        # The MathEquivalence fast path: exact numbers by value, integers never compared pairwise.
        self._math = self.equivalence if isinstance(self.equivalence, MathEquivalence) else None
        self._label_of_number: dict[tuple[int | Fraction, bool], int] = {}
        self._non_integer_labels: list[int] = []

    def add(self, answer: str | None) -> int:
        """Adds one answer and returns its label (``NONE`` for None)."""
        label = NONE if answer is None else self._label_for(answer)
        self._labels.append(label)
        if label != NONE:
            self._counts[label] += 1
        return label

    def extend(self, answers: Iterable[str | None]) -> list[int]:
        """Adds several answers; returns their labels."""
        return [self.add(answer) for answer in answers]

    def _label_for(self, answer: str) -> int:
        key = self._key(answer)
        label = self._label_of_key.get(key)
        if label is not None:
            return label
        math = self._math
        number_id: tuple[int | Fraction, bool] | None = None
        is_integer = False
        if math is not None:
            number = parse_number(key)
            if number is not None:
                number_id, is_integer = math._number_id(number), number.is_integer
                label = self._label_of_number.get(number_id)
            if label is None:
                # Two different integers are never equal: an integer is only compared with classes
                # whose representative is not an integer (a tolerance or a symbolic check may apply).
                candidates = self._non_integer_labels if is_integer else range(len(self._representatives))
                label = next((i for i in candidates if math.equal_normalized(self._rep_keys[i], key)), None)
        else:
            equivalence = self.equivalence
            label = next((i for i, rep in enumerate(self._representatives) if equivalence(rep, answer)), None)
        if label is None:
            label = len(self._representatives)
            self._representatives.append(answer)
            self._rep_keys.append(key)
            self._counts.append(0)
            if not is_integer:
                self._non_integer_labels.append(label)
        self._label_of_key[key] = label
        if number_id is not None:
            self._label_of_number.setdefault(number_id, label)
        return label

    @property
    def labels(self) -> list[int]:
        """Label of every answer added, in order."""
        return list(self._labels)

    @property
    def representatives(self) -> list[str]:
        """First answer (as given) of each class, indexed by label."""
        return list(self._representatives)

    @property
    def counts(self) -> list[int]:
        """Answers in each class, indexed by label."""
        return list(self._counts)

    def majority(self) -> tuple[int, str] | None:
        """``(label, representative)`` of the largest class, or None when no answer has been given
        (missing answers never win). Ties go to the class that reached the top count first, the
        rule the calibration replay uses, so replayed and live votes agree."""
        if not self._counts:
            return None
        top = max(self._counts)
        tied = [i for i, c in enumerate(self._counts) if c == top]
        best = tied[0]
        if len(tied) > 1:
            seen = [0] * len(self._counts)
            for label in self._labels:
                if label >= 0:
                    seen[label] += 1
                    if seen[label] == top:
                        best = label
                        break
        return best, self._representatives[best]

    def __len__(self) -> int:
        return len(self._labels)


def cluster_answers(answers: Sequence[str | None], equivalence: Equivalence | None = None) -> list[int]:
    """Class label of each answer: 0, 1, ... in order of first appearance, ``NONE`` for None.

    ``equivalence`` defaults to a shared :class:`~.MathEquivalence`. Feed the labels to
    ``Observations.single(labels)``.
    """
    return AnswerClusters(equivalence).extend(answers)


def majority_vote(answers: Sequence[str | None], equivalence: Equivalence | None = None) -> str | None:
    """The first-seen answer (as given) of the largest class; ties go to the class that reached the
    top count first. None when every answer is missing."""
    clusters = AnswerClusters(equivalence)
    clusters.extend(answers)
    winner = clusters.majority()
    return None if winner is None else winner[1]
