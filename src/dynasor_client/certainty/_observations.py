"""What certaindex is computed from: a program's observations, as arrays.

Every signal and stop rule works on :class:`Observations`: per-observation features laid out as
``[B, K]`` arrays — B independent sequences (programs, or one program's many replayed sample
orders), K observations each in the order they arrived. A live program is simply B = 1. One code
path therefore serves both a running program (``signal(obs)``) and calibration, which replays
thousands of sample orders at once (``signal.batch(obs)``).

An observation is a sample (self-consistency, best-of-N), a tree path (Rebase, MCTS) or a probe of a
chain of thought (Dynasor-CoT). Its answer enters as a *class label*: observations with the same
label hold equivalent answers (see :mod:`.answers`). Missing answers get label ``NONE``.

**The rule for missing answers, used everywhere:** an observation without an answer never wins a
vote, and for entropy each one counts as a class of its own — a program that cannot produce
answers is not "certain".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

NONE = -1  #: label of an observation without an answer

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Certainty:
    """A signal's value in [0, 1] and the number of observations it rests on."""

    value: float
    support: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0 and not np.isnan(self.value):
            raise ValueError(f"certainty must be in [0, 1], got {self.value}")


def _nan_array(shape: tuple[int, int]) -> FloatArray:
    return np.full(shape, np.nan)


@dataclass(frozen=True)
class Observations:
    """Per-observation features of B sequences of K observations (``[B, K]`` arrays).

    - ``labels``: answer class per observation, ``NONE`` (-1) for a missing answer; labels are only
      compared within one row.
    - ``valid``: which positions hold an observation (rows may be shorter than K).
    - ``rewards``: reward-model score per observation (NaN when none), raw, not normalised.
    - ``tokens``: tokens the observation cost.
    - ``confidence``: a per-observation confidence (DeepConf group confidence, mean logprob, ...;
      NaN when none); higher is more confident.
    - ``hesitant``: the observation shows hesitation (probes of a chain of thought).
    """

    labels: IntArray
    valid: BoolArray
    rewards: FloatArray = field(default_factory=lambda: np.empty((0, 0)))
    tokens: IntArray = field(default_factory=lambda: np.empty((0, 0), dtype=np.int64))
    confidence: FloatArray = field(default_factory=lambda: np.empty((0, 0)))
    hesitant: BoolArray = field(default_factory=lambda: np.empty((0, 0), dtype=bool))

    def __post_init__(self) -> None:
        shape = self.labels.shape
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be a [B, K] array, got shape {shape}")
        # Missing feature arrays default to "absent" of the right shape.
        defaults = {
            "rewards": _nan_array(shape),
            "tokens": np.zeros(shape, dtype=np.int64),
            "confidence": _nan_array(shape),
            "hesitant": np.zeros(shape, dtype=bool),
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            if value.size == 0 and value.shape != shape:
                object.__setattr__(self, name, default)
            elif value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, labels {shape}")
        if self.valid.shape != shape:
            raise ValueError(f"valid has shape {self.valid.shape}, labels {shape}")

    @property
    def shape(self) -> tuple[int, int]:
        b, k = self.labels.shape
        return int(b), int(k)

    @property
    def counts(self) -> IntArray:
        """Number of valid observations in each prefix: ``[B, K]``, ``counts[b, k]`` for the first k+1."""
        return np.cumsum(self.valid, axis=1)

    @classmethod
    def single(
        cls,
        labels: Sequence[int],
        *,
        rewards: Sequence[float | None] | None = None,
        tokens: Sequence[int] | None = None,
        confidence: Sequence[float | None] | None = None,
        hesitant: Sequence[bool] | None = None,
    ) -> Observations:
        """One program's observations (B = 1) from plain sequences."""
        k = len(labels)

        def floats(values: Sequence[float | None] | None) -> FloatArray:
            if values is None:
                return _nan_array((1, k))
            if len(values) != k:
                raise ValueError("every feature needs one value per observation")
            return np.array([[np.nan if v is None else float(v) for v in values]], dtype=np.float64)

        if (tokens is not None and len(tokens) != k) or (hesitant is not None and len(hesitant) != k):
            raise ValueError("every feature needs one value per observation")
        return cls(
            labels=np.array([list(labels)], dtype=np.int64).reshape(1, k),
            valid=np.ones((1, k), dtype=bool),
            rewards=floats(rewards),
            tokens=np.array([list(tokens or [0] * k)], dtype=np.int64).reshape(1, k),
            confidence=floats(confidence),
            hesitant=np.array([list(hesitant or [False] * k)], dtype=bool).reshape(1, k),
        )

    def take(self, order: IntArray) -> Observations:
        """The same observations reordered per row: ``order`` is ``[B, K]`` (or ``[K]``) indices."""
        idx = np.broadcast_to(order, self.labels.shape)
        return Observations(
            labels=np.take_along_axis(self.labels, idx, 1),
            valid=np.take_along_axis(self.valid, idx, 1),
            rewards=np.take_along_axis(self.rewards, idx, 1),
            tokens=np.take_along_axis(self.tokens, idx, 1),
            confidence=np.take_along_axis(self.confidence, idx, 1),
            hesitant=np.take_along_axis(self.hesitant, idx, 1),
        )


def prefix_class_counts(obs: Observations) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Per prefix, the count of each real answer class and of missing answers.

    Returns ``(counts [B, K, C], none_counts [B, K])`` where C is the number of distinct labels
    (labels are remapped to 0..C-1 per call; only real answers are counted in ``counts``).
    """
    labels = np.where(obs.valid, obs.labels, NONE)
    real = labels >= 0
    if real.any():
        uniq, inverse = np.unique(np.where(real, labels, labels.max() + 1), return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        n_classes = len(uniq) - (0 if real.all() else 1)
    else:
        inverse = np.zeros(labels.shape, dtype=np.int64)
        n_classes = 0
    b, k = labels.shape
    # int32 keeps calibration batches (20,000 rows x 30 x 30 classes) near 70 MB.
    onehot = np.zeros((b, k, max(n_classes, 1)), dtype=np.int32)
    rows, cols = np.nonzero(real)
    onehot[rows, cols, inverse[rows, cols]] = 1
    none = (~real & obs.valid).astype(np.int32)
    return np.cumsum(onehot, axis=1, dtype=np.int32), np.cumsum(none, axis=1, dtype=np.int32)


def agreeing_future(obs: Observations, count: int) -> Observations:
    """Each row's observations (its valid ones, in order) followed by copies of its most frequent
    answer (a new answer where it has none) up to ``count`` observations: the future in which every
    observation still to come agrees. ``count`` columns, all valid; a row that already holds more
    keeps its first ``count``. Only labels carry over (the other features are absent)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    b, _ = obs.shape
    rows = np.arange(b)
    known = obs.valid.sum(axis=1)
    order = np.argsort(~obs.valid, axis=1, kind="stable")  # valid positions first, in order
    labels = np.take_along_axis(np.where(obs.valid, obs.labels, NONE), order, axis=1)
    real = (np.arange(labels.shape[1]) < known[:, None]) & (labels >= 0)
    leader = np.full(b, int(labels.max(initial=0)) + 1, dtype=np.int64)  # a label no row uses
    if real.any():
        key = np.where(real, labels, -1)
        votes = np.zeros((b, int(key.max()) + 2), dtype=np.int64)
        np.add.at(votes, (rows[:, None].repeat(key.shape[1], 1), key + 1), 1)
        votes[:, 0] = 0  # missing answers and padding never lead
        has = votes.max(axis=1) > 0
        leader = np.where(has, votes.argmax(axis=1) - 1, leader)
    future = np.repeat(leader[:, None], count, axis=1)
    keep = min(count, labels.shape[1])
    future[:, :keep] = np.where(np.arange(keep) < known[:, None], labels[:, :keep], future[:, :keep])
    return Observations(labels=future, valid=np.ones((b, count), dtype=bool))
