"""How calibration groups and grades recorded samples; the trace format itself is
:mod:`dynasor_client.traces` (``load_traces``, the deterministic train/test ``split_of``, folds).

Answers are grouped into classes by a labeller (``cluster_answers`` from
:mod:`dynasor_client.certainty.answers` when available, else exact match on stripped strings) and a
sample is graded by its recorded ``correct`` flag, else by equivalence with the gold answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..traces import (
    TEST_FRACTION,
    Split,
    TraceQuestion,
    TraceSample,
    fold_of,
    load_traces,
    select_split,
    split_of,
)

__all__ = [
    "TEST_FRACTION",
    "ClusterFn",
    "EquivalentFn",
    "Split",
    "TraceQuestion",
    "TraceSample",
    "default_cluster",
    "equivalence_from_cluster",
    "exact_cluster",
    "fold_of",
    "load_traces",
    "select_split",
    "split_of",
]

#: Labels answers into classes of equivalent answers: one label per answer, ``-1`` for ``None``.
ClusterFn = Callable[[Sequence[str | None]], list[int]]
#: Whether an answer is equivalent to the reference answer (``answer``, ``gold``).
EquivalentFn = Callable[[str, str], bool]


# -- answers: how samples are grouped and graded ------------------------------------------------------


def exact_cluster(answers: Sequence[str | None]) -> list[int]:
    """Fallback labeller: answers equal after stripping whitespace share a label; ``None``/empty is -1."""
    seen: dict[str, int] = {}
    labels: list[int] = []
    for answer in answers:
        key = None if answer is None else answer.strip()
        if not key:
            labels.append(-1)
            continue
        labels.append(seen.setdefault(key, len(seen)))
    return labels


def default_cluster() -> ClusterFn:
    """``dynasor_client.certainty.answers.cluster_answers`` when available, else :func:`exact_cluster`."""
    try:
        from dynasor_client.certainty.answers import (  # type: ignore[import-not-found,unused-ignore]
            cluster_answers,
        )
    except ImportError:
        return exact_cluster
    fn: ClusterFn = cluster_answers
    return fn


def equivalence_from_cluster(cluster: ClusterFn) -> EquivalentFn:
    """Grade an answer against the reference with the labeller itself: equivalent iff same label."""

    def equivalent(answer: str, gold: str) -> bool:
        labels = cluster([gold, answer])
        return labels[0] >= 0 and labels[0] == labels[1]

    return equivalent
