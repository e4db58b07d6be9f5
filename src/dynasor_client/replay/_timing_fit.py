"""Fitting a :class:`~dynasor_client.replay._profiles.GPUProfile` to timings recorded from a real server.

Each :class:`TimingSample` is one engine iteration (or a span you know to be one): it ran
``running`` sequences holding ``kv_tokens`` tokens of context in total, prefilled ``prefill_tokens``
uncached prompt tokens, and took ``seconds``. The profile's cost model is linear in its constants,
``seconds = a + b * running + c * kv_tokens + p * prefill_tokens``, so :func:`fit_profile` finds
``a, b, c, p >= 0`` by non-negative least squares (``scipy.optimize.nnls``), minimising the
*relative* error (each row divided by its ``seconds``), since timings span milliseconds (decode
steps) to seconds (long prefills). Columns are scaled to unit norm first for conditioning.

How to record samples from a server you can only reach over HTTP:

* Decode steps: run ``N`` concurrent streaming requests with prompts of ``L`` tokens; the gaps
  between streamed tokens (inter-token latency) of the steady middle part are iterations with
  ``running = N`` and ``kv_tokens ~= N * (L + tokens generated so far)``. Vary both ``N`` and ``L``:
  with one context length, ``kv_tokens`` is proportional to ``running`` and ``b`` and ``c`` cannot
  be told apart (the fit then raises).
* Prefills: the time to first token of a lone request with a ``P``-token prompt on an idle server
  (with prefix caching off, or distinct prompts) is one iteration with ``running = 1``,
  ``kv_tokens = P``, ``prefill_tokens = P``.

A JSON-lines file holds one object per line with the fields of :class:`TimingSample`
(``running``, ``kv_tokens`` and ``prefill_tokens`` default to 1, 0, 0); blank lines and lines
starting with ``#`` are skipped. A constant no sample informs (say ``p`` when no sample prefills) is
copied from the ``base`` profile, as are the KV capacity, block size and batch limit: pass
``base=`` the profile of the same model and GPU, or ``dataclasses.replace`` the result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.optimize import nnls  # type: ignore[import-untyped,unused-ignore]

from ._profiles import GPUProfile, get_profile

__all__ = ["TimingSample", "fit_profile", "load_timing_samples"]

_CONSTANTS = ("decode_base_s", "decode_per_seq_s", "decode_per_kv_token_s", "prefill_per_token_s")


@dataclass(frozen=True, slots=True)
class TimingSample:
    """One recorded engine iteration (see the module docstring)."""

    seconds: float
    running: int = 1
    kv_tokens: int = 0
    prefill_tokens: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"TimingSample.seconds must be > 0, got {self.seconds!r}")
        if self.running < 0 or self.kv_tokens < 0 or self.prefill_tokens < 0:
            raise ValueError(f"TimingSample counts must be >= 0, got {self!r}")


def load_timing_samples(source: str | Path | Iterable[str]) -> list[TimingSample]:
    """Samples from a JSON-lines file (a path) or from an iterable of its lines."""
    lines: Iterable[str]
    where = "timing samples"
    if isinstance(source, str | Path):
        where = str(source)
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    else:
        lines = source
    names = {f.name for f in fields(TimingSample)}
    samples: list[TimingSample] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}:{number}: not JSON: {exc}") from None
        if not isinstance(record, dict) or "seconds" not in record or set(record) - names:
            raise ValueError(
                f"{where}:{number}: expected an object with 'seconds' and optionally "
                f"'running', 'kv_tokens', 'prefill_tokens', got {text[:200]}"
            )
        try:
            samples.append(TimingSample(**record))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}:{number}: {exc}") from None
    return samples


def fit_profile(
    samples: Iterable[TimingSample],
    *,
    name: str,
    base: GPUProfile | str = "llama3-8b-a100-80gb",
    description: str | None = None,
) -> GPUProfile:
    """A profile whose ``a, b, c, p`` fit ``samples`` best (relative least squares, non-negative).

    The other fields come from ``base``. Raises ValueError when the samples cannot separate the
    constants they involve (too few, or ``kv_tokens`` proportional to ``running``).
    """
    base_profile = get_profile(base)
    rows = list(samples)
    if not rows:
        raise ValueError("fit_profile: no timing samples")
    design = np.array([[1.0, s.running, s.kv_tokens, s.prefill_tokens] for s in rows], dtype=np.float64)
    seconds = np.array([s.seconds for s in rows], dtype=np.float64)
    constants = np.array([getattr(base_profile, c) for c in _CONSTANTS], dtype=np.float64)
    free = np.flatnonzero(np.any(design != 0, axis=0))
    fixed = np.setdiff1d(np.arange(4), free)
    target = seconds - design[:, fixed] @ constants[fixed]
    weighted = design[:, free] / seconds[:, None]
    norms = np.linalg.norm(weighted, axis=0)
    scaled = weighted / norms
    if len(rows) < len(free) or np.linalg.matrix_rank(scaled, tol=1e-9) < len(free):
        names = [_CONSTANTS[i] for i in free]
        raise ValueError(
            f"fit_profile: {len(rows)} samples cannot separate {names}: vary the batch size, the context "
            "length and the prompt length independently (see the dynasor_client.replay docs)"
        )
    solution, _ = nnls(scaled, target / seconds)
    constants[free] = np.asarray(solution, dtype=np.float64) / norms
    predicted = design @ constants
    rms = float(np.sqrt(np.mean(((predicted - seconds) / seconds) ** 2)))
    summary = f"fitted to {len(rows)} timing samples (rms relative error {rms:.1%}); base {base_profile.name}"
    return GPUProfile(
        name=name,
        description=f"{description}; {summary}" if description else summary,
        decode_base_s=float(constants[0]),
        decode_per_seq_s=float(constants[1]),
        decode_per_kv_token_s=float(constants[2]),
        prefill_per_token_s=float(constants[3]),
        kv_capacity_tokens=base_profile.kv_capacity_tokens,
        block_size=base_profile.block_size,
        max_batch=base_profile.max_batch,
    )
