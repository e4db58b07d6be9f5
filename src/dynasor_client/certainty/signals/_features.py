"""Per-observation features: one number (or flag) per observation, computed from its raw output.

Signals never see text or token logprobs; they see the ``[B, K]`` arrays of :class:`Observations`.
The functions here turn one observation's raw output into the value that goes into one cell:

- :func:`is_hesitant` — a probe's response shows hesitation (``Observations.hesitant``).
- DeepConf confidences (Fu et al. 2025, "Deep Think with Confidence") from top-k token logprobs:
  :func:`token_confidence`, :func:`group_confidence`, :func:`lowest_group_confidence`,
  :func:`bottom_group_confidence`, :func:`tail_confidence` (``Observations.confidence``; higher is
  more confident).
- When only the chosen token's logprob is known: :func:`mean_logprob` and
  :func:`lowest_window_mean_logprob` (also ``Observations.confidence``; higher is more confident).
  Do not feed chosen-token logprobs to :func:`token_confidence`: with k = 1, -logprob is *high* when
  the model was *unsure* of its token, the opposite of DeepConf's meaning.
- :func:`reduce_step_rewards` — a process reward model's per-step scores reduced to one score per
  observation (``Observations.rewards``).

Every float feature is NaN for an observation without the data (no tokens, no steps).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from .._observations import FloatArray

#: Default hesitation words and phrases: Dynasor-CoT's list ("wait", "hold", "but", "okay", "no",
#: "hmm") plus phrases that announce a re-check. Matched as whole words, case-insensitively; a
#: space in a phrase matches any run of whitespace. Probe responses are short (a boxed answer and a
#: few tokens), so a common word such as "but" there does signal doubt.
DEFAULT_HESITATION_WORDS: tuple[str, ...] = (
    "wait",
    "hmm",
    "hmmm",
    "hold",
    "hold on",
    "but",
    "no",
    "okay",
    "alternatively",
    "actually",
    "not sure",
    "double-check",
    "let me re-check",
    "let me recheck",
    "let me verify",
)

DEFAULT_WINDOW = 2048  #: DeepConf's group (sliding window) size in tokens
DEFAULT_TAIL = 2048  #: DeepConf's tail length in tokens


@lru_cache(maxsize=64)
def _hesitation_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = [r"\s+".join(re.escape(piece) for piece in w.split()) for w in words if w.strip()]
    if not parts:
        return None
    alternatives = "|".join(sorted(set(parts), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def is_hesitant(text: str, words: Iterable[str] = DEFAULT_HESITATION_WORDS) -> bool:
    """Whether ``text`` contains one of ``words`` as a whole word or phrase, ignoring case.

    "Now" does not contain "no", "threshold on" does not contain "hold on", "Wait," does contain
    "wait". An empty word list makes nothing hesitant.
    """
    pattern = _hesitation_pattern(tuple(words))
    return pattern is not None and pattern.search(text) is not None


# -- DeepConf: confidences from top-k logprobs --------------------------------------------------------


def _as_matrix(top_logprobs: npt.ArrayLike | Sequence[Sequence[float]]) -> FloatArray:
    """``[T, k]`` floats; ragged rows (fewer alternatives at some positions) are padded with NaN."""
    try:
        matrix = np.asarray(top_logprobs, dtype=np.float64)
    except ValueError:  # ragged
        rows = [np.asarray(row, dtype=np.float64).ravel() for row in top_logprobs]  # type: ignore[union-attr]
        width = max((len(r) for r in rows), default=0)
        matrix = np.full((len(rows), width), np.nan)
        for i, row in enumerate(rows):
            matrix[i, : len(row)] = row
    if matrix.size == 0:
        return np.empty((0, 1))
    if matrix.ndim == 1:
        raise ValueError("top_logprobs must be [T, k] (one row of top-k logprobs per token)")
    return matrix


def token_confidence(top_logprobs: npt.ArrayLike | Sequence[Sequence[float]]) -> FloatArray:
    """DeepConf token confidence C_i = -(1/k) sum_j log P_i(j) over the top-k logprobs at each position.

    ``top_logprobs`` is ``[T, k]`` (the chosen token may be among them, as servers return it). High
    when the alternatives are unlikely, i.e. the model was sure. NaN entries (ragged top-k) are
    ignored; a position with none gives NaN.
    """
    matrix = _as_matrix(top_logprobs)
    present = ~np.isnan(matrix)
    n = present.sum(axis=1)
    total = np.where(present, matrix, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(n > 0, -total / np.maximum(n, 1), np.nan)
    return out


def _finite_1d(values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[~np.isnan(array)]


def _window_means(values: FloatArray, window: int) -> FloatArray:
    """Means of every window of ``window`` consecutive values; one mean of all when shorter."""
    if window < 1:
        raise ValueError("window must be >= 1")
    if values.size == 0:
        return values
    w = min(window, values.size)
    sums = np.concatenate(([0.0], np.cumsum(values)))
    means: FloatArray = (sums[w:] - sums[:-w]) / w
    return means


def group_confidence(token_conf: npt.ArrayLike, window: int = DEFAULT_WINDOW) -> FloatArray:
    """Group confidences: mean token confidence over every sliding window of ``window`` tokens.

    A sequence shorter than the window forms one group (its mean). NaN tokens (no logprobs) are
    skipped. Empty input gives an empty array.
    """
    return _window_means(_finite_1d(token_conf), window)


def lowest_group_confidence(token_conf: npt.ArrayLike, window: int = DEFAULT_WINDOW) -> float:
    """DeepConf's lowest group confidence: the least confident stretch of the trace (NaN if empty)."""
    groups = group_confidence(token_conf, window)
    return float(groups.min()) if groups.size else math.nan


def bottom_group_confidence(
    token_conf: npt.ArrayLike, window: int = DEFAULT_WINDOW, fraction: float = 0.1
) -> float:
    """DeepConf's bottom-10% group confidence: mean of the lowest ``fraction`` of group confidences.

    The number of groups averaged is ``max(1, floor(fraction * groups))``, as in DeepConf's code.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1]")
    groups = group_confidence(token_conf, window)
    if groups.size == 0:
        return math.nan
    n = max(1, int(groups.size * fraction))
    return float(np.partition(groups, n - 1)[:n].mean())


def tail_confidence(token_conf: npt.ArrayLike, tail: int = DEFAULT_TAIL) -> float:
    """DeepConf's tail confidence: mean token confidence over the last ``tail`` tokens (NaN if empty)."""
    if tail < 1:
        raise ValueError("tail must be >= 1")
    values = _finite_1d(token_conf)
    return float(values[-tail:].mean()) if values.size else math.nan


# -- the chosen token's logprob only -----------------------------------------------------------------


def mean_logprob(token_logprobs: npt.ArrayLike) -> float:
    """Mean logprob of the generated tokens (<= 0; higher is more confident; NaN if empty)."""
    values = _finite_1d(token_logprobs)
    return float(values.mean()) if values.size else math.nan


def lowest_window_mean_logprob(token_logprobs: npt.ArrayLike, window: int = DEFAULT_WINDOW) -> float:
    """The lowest mean logprob over sliding windows of ``window`` tokens (whole sequence if shorter).

    The chosen-token analogue of :func:`lowest_group_confidence` (NaN if empty).
    """
    means = _window_means(_finite_1d(token_logprobs), window)
    return float(means.min()) if means.size else math.nan


# -- process rewards ---------------------------------------------------------------------------------


def reduce_step_rewards(step_rewards: npt.ArrayLike, how: Literal["min", "last"] = "min") -> float:
    """One score per observation from a process reward model's per-step scores.

    ``"min"`` (default): the weakest step decides (Lightman et al. 2023); ``"last"``: the final
    step's score. NaN steps are ignored; no steps gives NaN.
    """
    values = _finite_1d(step_rewards)
    if how not in ("min", "last"):
        raise ValueError(f"how must be 'min' or 'last', got {how!r}")
    if values.size == 0:
        return math.nan
    return float(values.min() if how == "min" else values[-1])
