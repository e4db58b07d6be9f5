"""Benchmarks: what the library's methods cost and score, with the provenance to reproduce them.

- :func:`run_batch_benchmark` (``dynasor-client bench batch``): token-to-accuracy of every stopping
  method (uniform, the paper's rules, Adaptive-Consistency, ESC, confidence baselines, the calibrated
  rule, the oracle) replayed over recorded traces; :func:`batch_table`, :func:`plot_batch`.
- Shared plumbing for every benchmark (:mod:`._common`): :func:`run_metadata` (versions, git commit,
  machine), :func:`format_table`, :func:`write_json`, :func:`plot_token_accuracy`.
"""

from ._batch import (
    Method,
    add_batch_parser,
    batch_command,
    batch_table,
    calibration_overlap,
    method_stops,
    plot_batch,
    replay_in_orders,
    run_batch_benchmark,
    with_extracted_answers,
)
from ._common import (
    format_table,
    git_commit,
    jsonable,
    machine_info,
    plot_token_accuracy,
    run_metadata,
    versions,
    write_json,
)

__all__ = [
    "Method",
    "add_batch_parser",
    "batch_command",
    "batch_table",
    "calibration_overlap",
    "format_table",
    "git_commit",
    "jsonable",
    "machine_info",
    "method_stops",
    "plot_batch",
    "plot_token_accuracy",
    "replay_in_orders",
    "run_batch_benchmark",
    "run_metadata",
    "versions",
    "with_extracted_answers",
    "write_json",
]
