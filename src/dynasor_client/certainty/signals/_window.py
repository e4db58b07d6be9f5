"""Signals over a sliding window of the newest observations: ESC's window agreement and Dynasor-CoT's
probe consistency."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._observations import NONE, BoolArray, FloatArray, IntArray, Observations
from ._base import Signal
from ._registry import register_signal
from ._util import left_align_order, spread, take_rows


def _check_window(window: int) -> int:
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    return int(window)


def window_matches(labels: IntArray, usable: BoolArray, window: int) -> IntArray:
    """On left-aligned rows: how many of the last ``window`` positions up to k hold a usable
    observation whose label equals the newest usable label among them (0 when there is none)."""
    b, k = labels.shape
    lab = np.where(usable, labels, NONE)
    pos = np.arange(k)
    last = np.maximum.accumulate(np.where(usable, pos, -1), axis=1)
    ref = np.take_along_axis(lab, np.clip(last, 0, None), axis=1)
    has_ref = (last >= 0) & (last > pos - window)
    count = np.zeros((b, k), dtype=np.int64)
    for lag in range(min(window, k)):
        count[:, lag:] += lab[:, : k - lag] == ref[:, lag:]
    return np.where(has_ref, count, 0)


def _windowed(obs: Observations, window: int, *, skip_hesitant: bool) -> tuple[IntArray, IntArray]:
    """(matches, observations in the window that may vote), per original position."""
    order = left_align_order(obs.valid)
    labels, valid = take_rows(obs.labels, order), take_rows(obs.valid, order)
    usable = valid & (labels >= 0)
    voters = valid
    if skip_hesitant:
        hesitant = take_rows(obs.hesitant, order)
        usable &= ~hesitant
        voters = valid & ~hesitant
    matches = window_matches(labels, usable, window)
    in_window = np.cumsum(voters, axis=1, dtype=np.int64)
    if window < in_window.shape[1]:
        in_window[:, window:] -= in_window[:, :-window].copy()
    counts = obs.counts
    return (
        spread(matches, counts, 0.0).astype(np.int64),
        spread(in_window, counts, 0.0).astype(np.int64),
    )


class WindowAgreement(Signal):
    """ESC's window agreement (Li et al. 2024, "Escape Sky-high Cost").

    1 if the last ``window`` observations are all answered and all equal, else 0 (also 0 until
    ``window`` observations exist). With ``fraction=True``: the share of the last ``window``
    observations that are answered and equal to the newest answer among them, divided by ``window``
    (so still below 1 until the window is full). Missing answers never agree. ESC samples in
    windows and stops at the first unanimous one: ``Threshold(WindowAgreement(5), 1.0, every=5)``.
    Support: ``min(window, observations so far)``.
    """

    name = "window_agreement"

    def __init__(self, window: int = 5, *, fraction: bool = False) -> None:
        self.window = _check_window(window)
        self.fraction = bool(fraction)

    def batch(self, obs: Observations) -> FloatArray:
        matches, _ = _windowed(obs, self.window, skip_hesitant=False)
        value = matches / self.window if self.fraction else (matches == self.window).astype(np.float64)
        return np.where(obs.counts > 0, value, np.nan)

    def support(self, obs: Observations) -> IntArray:
        return np.minimum(obs.counts, self.window)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "fraction": self.fraction}


class ProbeConsistency(Signal):
    """Dynasor-CoT's probe consistency: do the last ``window`` probes of a chain of thought agree?

    Observations are probes in the order they were taken. The window is the last ``window`` probes
    (hesitant or not). Value = (probes in the window that are non-hesitant, answered and equal to
    the newest such probe's answer) / ``window``. A hesitant probe (``Observations.hesitant``, see
    :func:`is_hesitant`) is left out of the agreement: it keeps its slot in the window but never
    counts as agreeing, exactly like a probe without an answer. Hence the value is 1 exactly when
    the last ``window`` probes are all confident and identical (Dynasor-CoT's stop condition), it
    stays below 1 until ``window`` probes exist, and hesitation lowers it until it leaves the window.
    Support: the non-hesitant probes in the window.
    """

    name = "probe_consistency"

    def __init__(self, window: int = 3) -> None:
        self.window = _check_window(window)

    def batch(self, obs: Observations) -> FloatArray:
        matches, _ = _windowed(obs, self.window, skip_hesitant=True)
        return np.where(obs.counts > 0, matches / self.window, np.nan)

    def support(self, obs: Observations) -> IntArray:
        _, voters = _windowed(obs, self.window, skip_hesitant=True)
        return voters

    def params(self) -> dict[str, Any]:
        return {"window": self.window}


register_signal(WindowAgreement.name, WindowAgreement)
register_signal(ProbeConsistency.name, ProbeConsistency)
