"""Peers' stopping rules, reimplemented as stop rules so ``bench batch`` replays them like ours.

:class:`DoublingSupermajority` is its-hub's adaptive self-consistency (PyPI ``its-hub`` 1.2.0,
``AdaptiveSelfConsistency``): draw 2 samples, then double what is held (2, 4, 8, 16, ... up to the
budget), and after each round stop when the leading answer's share of *all* samples held reaches
the threshold (0.75 by default). The budget is the ``Cap`` it is combined with. ``bench peers``
runs its-hub's own code over HTTP; ``tests/test_bench_peers.py`` checks that the two stop at the
same sample on the same sample sequences.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..certainty import BoolArray, FloatArray, Observations, StopRule

__all__ = ["ITS_HUB_THRESHOLD", "DoublingSupermajority", "its_hub_adaptive"]

#: its-hub's default supermajority
ITS_HUB_THRESHOLD = 0.75


def _is_doubling_count(counts: np.ndarray[Any, Any]) -> BoolArray:
    """Counts 2, 4, 8, ...: where a doubling schedule that starts at 2 checks."""
    c = counts.astype(np.int64)
    return np.asarray((c >= 2) & ((c & (c - 1)) == 0), dtype=bool)


class DoublingSupermajority(StopRule):
    """Stop at 2, 4, 8, ... samples when the leader's share of the samples held is >= ``threshold``.

    Missing answers never lead (the library's missing-answer rule); its-hub counts each unparsable
    answer as a class of its own (``bench peers`` projects them so), which can lead only when every
    class has one sample, a share of 1/n: below any threshold above 1/2 from 2 samples on, so both
    decide alike for the thresholds its-hub accepts, (0.5, 1].
    """

    kind: ClassVar[str] = "doubling_supermajority"

    def __init__(self, threshold: float = ITS_HUB_THRESHOLD) -> None:
        if not 0.5 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0.5, 1.0] (as its-hub requires), got {threshold}")
        self.threshold = float(threshold)

    def share(self, obs: Observations) -> FloatArray:
        """``[B, K]``: the leader's count over the samples held, after every prefix (0 with no answer)."""
        real = obs.valid & (obs.labels >= 0)
        leader = np.zeros(obs.shape, dtype=np.int64)
        for label in np.unique(obs.labels[real]):  # a few answer classes: one pass each
            leader = np.maximum(leader, np.cumsum(real & (obs.labels == label), axis=1))
        held = np.maximum(obs.counts, 1)
        # the same float division as its-hub (top_count / len(eligible)), so ties at the threshold agree
        return np.asarray(leader / held, dtype=np.float64)

    def check_mask(self, obs: Observations) -> BoolArray:
        return np.asarray(_is_doubling_count(obs.counts) & obs.valid, dtype=bool)

    def checkpoints(self, cap: int) -> list[int]:
        return [2**i for i in range(1, max(cap, 2).bit_length()) if 2**i <= cap]

    def batch(self, obs: Observations) -> BoolArray:
        return np.asarray(self.check_mask(obs) & (self.share(obs) >= self.threshold), dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRule:
        return cls(float(data.get("threshold", ITS_HUB_THRESHOLD)))


def its_hub_adaptive(cap: int, threshold: float = ITS_HUB_THRESHOLD) -> StopRule:
    """its-hub's ``AdaptiveSelfConsistency(threshold).ainfer(..., budget=cap)`` as a stop rule."""
    from ..certainty import Cap

    return Cap(cap) | DoublingSupermajority(threshold)
