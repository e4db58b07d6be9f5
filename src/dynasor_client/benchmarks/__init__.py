"""Benchmarks: what the library's methods cost and score, with the provenance to reproduce them.

- :func:`run_batch_benchmark` (``dynasor-client bench batch``): token-to-accuracy of every stopping
  method (uniform, the paper's rules, Adaptive-Consistency, ESC, confidence baselines, the calibrated
  rule, the oracle) replayed over recorded traces; :func:`batch_table`, :func:`plot_batch`
  (``docs/batch-benchmark.md``).
- :func:`run_overhead_benchmark` (``dynasor-client bench overhead``): the runtime's client CPU per
  request against a plain AsyncOpenAI loop, the scheduler's decision time with 10,000 programs
  queued, memory per waiting program; :func:`overhead_table`.
- :func:`run_online_benchmark` (``dynasor-client bench online``): deadline attainment of programs
  arriving online (Poisson) through the real runtime against the replay engine's timing model on a
  virtual clock: naive, gang, certaindex, SRW, deadline-aware; :func:`online_table`,
  :func:`plot_online` (``docs/online-benchmark.md``).
- :func:`bench_replay` (``dynasor-client bench replay``): the concurrent streams and tokens/s the
  replay server sustains on one core.
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
from ._online import (
    OnlineConfig,
    add_online_parser,
    online_command,
    online_table,
    plot_online,
    run_online_benchmark,
)
from ._overhead import (
    add_overhead_parser,
    measure_client_overhead,
    measure_scheduler,
    measure_waiting_memory,
    overhead_command,
    overhead_table,
    run_overhead_benchmark,
)
from ._replay import bench_replay

__all__ = [
    "Method",
    "OnlineConfig",
    "add_batch_parser",
    "add_online_parser",
    "add_overhead_parser",
    "batch_command",
    "batch_table",
    "bench_replay",
    "calibration_overlap",
    "format_table",
    "git_commit",
    "jsonable",
    "machine_info",
    "measure_client_overhead",
    "measure_scheduler",
    "measure_waiting_memory",
    "method_stops",
    "online_command",
    "online_table",
    "overhead_command",
    "overhead_table",
    "plot_batch",
    "plot_online",
    "plot_token_accuracy",
    "replay_in_orders",
    "run_batch_benchmark",
    "run_metadata",
    "run_online_benchmark",
    "run_overhead_benchmark",
    "versions",
    "with_extracted_answers",
    "write_json",
]
