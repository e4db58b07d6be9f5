"""Fitting certaindex-to-remaining-work curves (the paper's curve-fit allocation) with scipy.

The target needs no gold answers: for a replayed row, the *settle count* is the number of observations
after which the majority answer never changes again (up to the cap); the remaining work at count c is
``max(0, settle - c)``. :func:`fit_remaining_curve` fits :class:`RemainingCurve` (``a * (1 - h) ** b``)
to pairs (certaindex at c, remaining work from c) by least squares (``scipy.optimize``).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from ..certainty import BoolArray, FloatArray, IntArray, RemainingCurve


def settle_counts(winner: IntArray, valid: BoolArray) -> IntArray:
    """Per row: observations after which the prefix majority equals the final one for good."""
    b, k = winner.shape
    last = k - 1 - np.argmax(valid[:, ::-1], axis=1)
    final = winner[np.arange(b), last]
    differs = (winner != final[:, None]) & valid
    any_diff = differs.any(axis=1)
    last_diff = k - 1 - np.argmax(differs[:, ::-1], axis=1)
    counts = np.cumsum(valid, axis=1)
    # The final position always agrees with itself, so last_diff + 1 <= last when any_diff.
    settle = np.where(any_diff, counts[np.arange(b), np.minimum(last_diff + 1, k - 1)], 1)
    return np.asarray(settle, dtype=np.int64)


def fit_remaining_curve(
    h: FloatArray, remaining: FloatArray, *, max_work: float | None = None
) -> RemainingCurve:
    """Least-squares fit of ``remaining ~ a * (1 - h) ** b`` (NaN pairs dropped).

    For a given ``b`` the best ``a`` is linear least squares in closed form, so the fit is a bounded
    one-dimensional search over ``b`` in [0.05, 20] (``scipy.optimize.minimize_scalar``). ``max_work``
    bounds ``a`` = f(0) (the calibration passes the cap; default: unbounded). Too little data, or no
    spread in ``h``, gives a straight line through the mean (``b = 1``).
    """
    h = np.asarray(h, dtype=np.float64).ravel()
    y = np.asarray(remaining, dtype=np.float64).ravel()
    keep = np.isfinite(h) & np.isfinite(y)
    x, y = 1.0 - np.clip(h[keep], 0.0, 1.0), y[keep]
    top = float(max_work) if max_work is not None else np.inf
    if len(y) < 3 or float(np.ptp(x)) == 0.0:
        mean_gap = float(np.mean(x)) if len(x) else 1.0
        a = float(np.mean(y)) / mean_gap if len(y) and mean_gap > 0 else 0.0
        return RemainingCurve(min(max(a, 0.0), top), 1.0)

    def best_a(b: float) -> float:
        xb = x**b
        denom = float(np.dot(xb, xb))
        return min(max(float(np.dot(xb, y)) / denom, 0.0), top) if denom > 0 else 0.0

    def sse(b: float) -> float:
        return float(np.sum((y - best_a(b) * x**b) ** 2))

    result = minimize_scalar(sse, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-3})
    b = float(result.x) if np.isfinite(result.x) else 1.0
    return RemainingCurve(best_a(b), b)
