"""Plumbing every benchmark shares: provenance (versions, commit, machine), tables, JSON, plots.

A benchmark's JSON carries, besides its figures, what produced them::

    {"versions": {"python", "numpy", "scipy", "dynasor_client", ...},   # see versions()
     "commit": "40 hex digits" | null,                                  # git HEAD of the source tree
     "machine": {"system", "release", "machine", "processor", "cpus", "cpus_available",
                 "memory_gib", "python_implementation"},
     "elapsed_s": float}

:func:`run_metadata` gives the first three; :func:`write_json` writes a figures dict (non-finite
floats become ``null``, the file is replaced atomically); :func:`format_table` lays out a plain-text
table; :func:`plot_token_accuracy` draws a token-to-accuracy chart with matplotlib (Agg backend, the
``plot`` extra), imported only when a plot is asked for.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "format_table",
    "git_commit",
    "jsonable",
    "machine_info",
    "plot_token_accuracy",
    "pyplot",
    "run_metadata",
    "versions",
    "write_json",
]

#: Distributions whose versions every benchmark records (when installed).
BASE_PACKAGES = ("numpy", "scipy")


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Python, dynasor-client, numpy, scipy and the ``extra`` distributions that are installed."""
    out = {
        "python": platform.python_version(),
        "dynasor_client": _version_of("dynasor-client") or "unknown",
    }
    for name in (*BASE_PACKAGES, *extra):
        found = _version_of(name)
        if found is not None:
            out[name.replace("-", "_")] = found
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit (HEAD) of the tree holding ``path`` (default: this package's source), or None
    when it is not in a git checkout (an installed wheel) or git is absent."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where if where.is_dir() else where.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (no host names)."""
    try:
        available: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count()
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpus": os.cpu_count(),
        "cpus_available": available,
        "memory_gib": _memory_gib(),
        "python_implementation": platform.python_implementation(),
    }


def run_metadata(extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    """``{"versions", "commit", "machine"}`` for a benchmark's JSON."""
    return {"versions": versions(extra_packages), "commit": git_commit(), "machine": machine_info()}


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as Python numbers and NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return jsonable(item())
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, replacing ``path`` atomically (non-finite floats as null)."""
    target = Path(path)
    text = json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a ValueError when matplotlib is not installed."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise ValueError(f"plotting needs matplotlib: pip install 'dynasor-client[plot]' ({exc})") from exc


def save_figure(fig: Any, path: str | Path) -> None:
    """Lay ``fig`` out tightly and save it to ``path`` (its folder made when missing)."""
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)


def plot_token_accuracy(
    path: str | Path,
    *,
    curve: Sequence[tuple[float, float]],
    points: Mapping[str, tuple[float, float]],
    title: str = "",
    curve_label: str = "uniform allocation",
    xlabel: str = "mean generated tokens per question",
    ylabel: str = "accuracy",
) -> None:
    """Token-to-accuracy chart: ``curve`` as a line of (tokens, accuracy), ``points`` as labelled
    markers. Needs matplotlib (``pip install 'dynasor-client[plot]'``); a ValueError says so."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        if curve:
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, "-o", color="0.55", markersize=3, linewidth=1.2, label=curve_label, zorder=1)
        markers = "sD^v<>pP*Xh"
        for i, (name, (x, y)) in enumerate(points.items()):
            ax.scatter([x], [y], marker=markers[i % len(markers)], s=60, label=name, zorder=3, alpha=0.85)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        save_figure(fig, path)
    finally:
        plt.close(fig)
