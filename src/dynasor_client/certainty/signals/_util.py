"""Vectorised helpers shared by the signals (all work on ``[B, K]`` arrays, row by row)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from .._observations import BoolArray, FloatArray, IntArray

Aggregate = Literal["mean", "max", "min"]
ArrayT = TypeVar("ArrayT", bound=npt.NDArray[Any])
AGGREGATES: tuple[str, ...] = ("mean", "max", "min")


def check_aggregate(aggregate: str) -> Aggregate:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    return aggregate  # type: ignore[return-value]


def prefix_aggregate(values: FloatArray, present: BoolArray, aggregate: Aggregate) -> FloatArray:
    """Mean / max / min of ``values`` over the ``present`` cells of each prefix; NaN before the first."""
    n = np.cumsum(present, axis=1)
    if aggregate == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = np.cumsum(np.where(present, values, 0.0), axis=1) / n
    elif aggregate == "max":
        out = np.maximum.accumulate(np.where(present, values, -np.inf), axis=1)
    else:
        out = np.minimum.accumulate(np.where(present, values, np.inf), axis=1)
    return np.where(n > 0, out, np.nan)


def left_align_order(valid: BoolArray) -> IntArray | None:
    """Per-row order moving valid positions to the front (stable), or None when they already are."""
    k = valid.shape[1]
    aligned = np.arange(k) < valid.sum(axis=1, keepdims=True)
    if np.array_equal(valid, aligned):
        return None
    return np.argsort(~valid, axis=1, kind="stable")


def take_rows(array: ArrayT, order: IntArray | None) -> ArrayT:
    if order is None:
        return array
    return cast(ArrayT, np.take_along_axis(array, order, axis=1))


def spread(aligned: npt.NDArray[Any], counts: IntArray, fill: float) -> FloatArray:
    """Values computed on left-aligned rows, back at the original positions.

    ``out[b, k]`` is the value after the ``counts[b, k]`` valid observations seen by position k (an
    invalid position repeats the value before it); ``fill`` before the first valid observation.
    """
    if aligned.shape[1] == 0:
        return np.zeros(aligned.shape)
    idx = np.clip(counts - 1, 0, None)
    out = np.take_along_axis(aligned, idx, axis=1).astype(np.float64)
    return np.where(counts > 0, out, fill)


def dense_labels(labels: IntArray, usable: BoolArray) -> tuple[IntArray, int]:
    """Per-row class ids 0..C-1 for the ``usable`` observations (-1 elsewhere) and C, the most classes
    any row has. Equal labels in a row get equal ids; rows are independent, so C <= K."""
    b, k = labels.shape
    if not usable.any():
        return np.full((b, k), -1, dtype=np.int64), 0
    key = np.where(usable, labels, np.iinfo(np.int64).max)
    order = np.argsort(key, axis=1, kind="stable")
    ordered = np.take_along_axis(key, order, axis=1)
    new = np.ones((b, k), dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ids = np.empty((b, k), dtype=np.int64)
    np.put_along_axis(ids, order, np.cumsum(new, axis=1) - 1, axis=1)
    ids = np.where(usable, ids, -1)
    return ids, int(ids.max()) + 1
