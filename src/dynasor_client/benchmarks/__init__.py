"""Benchmarks: what the library's methods cost and score, with the provenance to reproduce them.

- :func:`run_batch_benchmark` (``dynasor-client bench batch``): token-to-accuracy of every stopping
  method (uniform, the paper's rules, Adaptive-Consistency, ESC, confidence baselines, the calibrated
  rule, the oracle) replayed over recorded traces; :func:`batch_table`, :func:`plot_batch`;
  ``ALGORITHMS`` and ``ANSWER_SOURCES``, what it accepts (``docs/batch-benchmark.md``).
- :func:`run_overhead_benchmark` (``dynasor-client bench overhead``): the runtime's client CPU per
  request against a plain AsyncOpenAI loop, the scheduler's decision time with 10,000 programs
  queued, memory per waiting program; :func:`overhead_table` (``docs/overhead-benchmark.md``).
- :func:`run_peers_benchmark` (``dynasor-client bench peers``): self-consistency against its-hub's
  adaptive self-consistency over HTTP against the replay server, several seeds; :func:`peers_table`,
  ``PEER_METHODS`` (``docs/peers.md``; needs the ``[peers]`` extra). its-hub's rule as a stop rule for
  ``bench batch``: :func:`its_hub_adaptive` (:class:`DoublingSupermajority`).
- :func:`run_online_benchmark` (``dynasor-client bench online``): deadline attainment of programs
  arriving online (Poisson) through the real runtime against the replay engine's timing model on a
  virtual clock: naive, gang, certaindex, SRW, deadline-aware; :func:`online_config` (the
  command's settings), :func:`online_table`, :func:`plot_online` (``docs/online-benchmark.md``);
  :func:`run_real_online_benchmark` (``bench online --local`` / ``--endpoint URL``): the same
  comparison on a real server beside the replay engine's prediction (:class:`RealOnlineConfig`,
  :func:`real_online_table`). :func:`run_racing_benchmark` (``bench racing``): what racing rounds
  (samples read as they finish) do to self-consistency's accuracy, per dataset
  (:class:`RacingConfig`, :func:`racing_table`).
- :func:`run_proxy_benchmark` (``dynasor-client bench proxy``): pass-through streaming through the
  proxy against the replay server directly: requests/s, added latency p50/p99, client, proxy and
  server CPU per request at 1/50/200/500 streams, the proxy's RSS after 1,000 aborted streams;
  :func:`proxy_table` (``docs/proxy-benchmark.md``).
- :func:`run_cot_benchmark` (``dynasor-client bench cot``): full chain of thought against
  Dynasor-CoT, DeepConf online and DEER-style trial answers on one server, same questions and seeds:
  accuracy, tokens including probes, requests, wall time with 95% intervals (:class:`CotConfig`,
  :func:`cot_table`, ``docs/cot-benchmark.md``).
- :func:`run_ray_benchmark` (``dynasor-client bench ray``): batch throughput in one process and over
  1 and 2 Ray workers against the replay server, lease messages per program per lease size;
  :func:`ray_table` (``docs/distributed.md``; needs the ``[ray]`` extra).
- :func:`bench_replay` (``dynasor-client bench replay``): the concurrent streams and tokens/s the
  replay server sustains on one core; :func:`bench_replay_summary`.
- Shared plumbing for every benchmark (:mod:`._common`): :func:`run_metadata` (versions, git commit,
  machine), :func:`format_table`, :func:`write_json`, :func:`plot_token_accuracy`.
"""

from ._batch import (
    ALGORITHMS,
    ANSWER_SOURCES,
    Method,
    batch_table,
    calibration_overlap,
    method_stops,
    plot_batch,
    replay_in_orders,
    run_batch_benchmark,
    with_extracted_answers,
)
from ._common import (
    write_json,
)
from ._cot import COT_METHODS, CotConfig, CotOutcome, run_cot_benchmark
from ._cot_report import cot_table
from ._online import (
    OnlineConfig,
    OnlineRunError,
    online_config,
    online_table,
    plot_online,
    run_online_benchmark,
)
from ._online_racing import RacingConfig, racing_table, run_racing_benchmark
from ._online_real import RealOnlineConfig, real_online_table, run_real_online_benchmark
from ._overhead import (
    measure_scheduler,
    measure_waiting_memory,
    overhead_table,
    run_overhead_benchmark,
)
from ._peer_rules import DoublingSupermajority, its_hub_adaptive
from ._peers import PEER_METHODS, peers_table, run_peers_benchmark
from ._proxy import proxy_table, run_proxy_benchmark
from ._ray import ray_table, run_ray_benchmark
from ._replay import bench_replay
from ._replay import bench_summary as bench_replay_summary

__all__ = [
    "ALGORITHMS",
    "ANSWER_SOURCES",
    "COT_METHODS",
    "PEER_METHODS",
    "CotConfig",
    "CotOutcome",
    "DoublingSupermajority",
    "Method",
    "OnlineConfig",
    "OnlineRunError",
    "RacingConfig",
    "RealOnlineConfig",
    "batch_table",
    "bench_replay",
    "bench_replay_summary",
    "calibration_overlap",
    "cot_table",
    "its_hub_adaptive",
    "measure_scheduler",
    "measure_waiting_memory",
    "method_stops",
    "online_config",
    "online_table",
    "overhead_table",
    "peers_table",
    "plot_batch",
    "plot_online",
    "proxy_table",
    "racing_table",
    "ray_table",
    "real_online_table",
    "replay_in_orders",
    "run_batch_benchmark",
    "run_cot_benchmark",
    "run_online_benchmark",
    "run_overhead_benchmark",
    "run_peers_benchmark",
    "run_proxy_benchmark",
    "run_racing_benchmark",
    "run_ray_benchmark",
    "run_real_online_benchmark",
    "with_extracted_answers",
    "write_json",
]
