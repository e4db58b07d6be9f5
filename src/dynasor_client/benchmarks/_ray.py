"""``dynasor-client bench ray``: batch throughput over Ray workers, and what the leases cost.

The replay server runs in a child process (``time_scale`` 0 by default: the modelled GPU waits for
nothing, so the client's and the server's CPU bound the throughput), a local Ray cluster is started
in this process (``num_cpus`` = the most workers asked for), and the same batch of self-consistency
programs (``n`` 30, the paper's rule, over the traces' first questions, cycled) runs:

- ``one process``: :meth:`Runtime.run_batch` here, no Ray (the baseline);
- ``ray W``: over :class:`~dynasor_client.distributed.RayBackend` with ``W`` workers, each ``lease``
  tokens per lease. ``wall_s`` includes starting the workers (``startup_s``, also given alone);
  ``programs_per_s`` is over ``wall_s - startup_s``, the steady rate a long batch approaches.

Every run has a global token budget too large to bind, so leases are taken and given back as in a
budgeted run without budget stops changing the work. Lease overhead: ``lease_messages`` (worker to
ledger actor) per program, and the requests that had to wait for a lease (``lease_waits``), for
each lease size at the most workers. Each run uses fresh program ids, so the server draws afresh.
Runs are repeated ``repeats`` times, interleaved; figures are per run. On a machine with fewer cores
than workers plus the server, more workers share the same cores: the figures say what distribution
costs here, not what a cluster gains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..endpoints import Endpoint
from ..program import Program, as_program
from ..replay import REPLAY_CAPABILITIES
from ..runtime import Runtime
from ..traces import load_traces
from ._common import format_table, run_metadata
from ._replay import child_server, free_port

__all__ = ["ray_table", "run_ray_benchmark"]

_BUDGET = 10**12  # leased, never binding


@contextlib.contextmanager
def _replay(traces: Path, time_scale: float, tmp: Path) -> Iterator[str]:
    port = free_port()
    argv = [
        "-m", "dynasor_client", "serve-replay", "--traces", str(traces), "--port", str(port),
        "--time-scale", repr(time_scale),
    ]  # fmt: skip

    def health() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return json.load(response)

    with child_server(argv, tmp / "replay.log", health):
        yield f"http://127.0.0.1:{port}/v1"


def _programs(traces: Path, count: int) -> list[Program]:
    from ..algorithms import self_consistency

    questions = load_traces(traces)
    return [
        as_program(self_consistency, questions[i % len(questions)].question, n=30, rule="paper")
        for i in range(count)
    ]


async def _one_run(
    url: str, programs: Sequence[Program], workers: int | None, lease: int, tag: str
) -> dict[str, Any]:
    from ..distributed import RayBackend

    backend = None if workers is None else RayBackend(workers=workers, lease_tokens=lease, id_prefix=tag)
    async with (
        Endpoint(url, capabilities=REPLAY_CAPABILITIES) as endpoint,
        Runtime(endpoint, token_budget=_BUDGET) as runtime,
    ):
        started = time.perf_counter()
        if backend is None:  # the baseline: ids of its own so the server draws afresh
            handles = [runtime.submit(p, program_id=f"{tag}-{i}") for i, p in enumerate(programs)]
            results = await asyncio.gather(*handles, return_exceptions=True)
            wall_s = time.perf_counter() - started
            finished = sum(not isinstance(r, BaseException) for r in results)
            return {"workers": 0, "lease": None, "wall_s": wall_s, "startup_s": 0.0, "finished": finished,
                    "programs_per_s": finished / wall_s, "lease_messages_per_program": 0.0}  # fmt: skip
        batch = await runtime.run_batch(programs, backend=backend, progress=False)
    stats = batch.metrics
    steady = batch.elapsed_s - (stats["startup_s"] or 0.0)
    waits = sum(int(w.get("lease_waits", 0)) for w in stats["per_worker"])
    return {
        "workers": workers, "lease": lease, "wall_s": batch.elapsed_s, "startup_s": stats["startup_s"],
        "finished": batch.finished, "programs_per_s": batch.finished / steady,
        "lease_messages": stats["lease_messages"],
        "lease_messages_per_program": stats["lease_messages_per_program"],
        "lease_waits": waits, "requests": stats["requests"],
    }  # fmt: skip


def run_ray_benchmark(
    traces: str | Path,
    *,
    programs: int = 200,
    workers: Sequence[int] = (1, 2),
    leases: Sequence[int] = (4096, 32768, 262144),
    lease: int = 32768,
    repeats: int = 2,
    time_scale: float = 0.0,
) -> dict[str, Any]:
    """Run the bench (module docs); returns its figures."""
    import ray

    if programs < 1 or repeats < 1 or not workers or min(workers) < 1 or min(leases, default=1) < 1:
        raise ValueError("programs, repeats, workers and leases must be >= 1")
    path = Path(traces)
    batch = _programs(path, programs)
    plan: list[tuple[int | None, int]] = [(None, lease), *((w, lease) for w in workers)]
    plan += [(max(workers), size) for size in leases if size != lease]
    runs: list[dict[str, Any]] = []
    init_started = time.perf_counter()
    ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init_s = time.perf_counter() - init_started
    try:
        with tempfile.TemporaryDirectory() as tmp, _replay(path, time_scale, Path(tmp)) as url:
            for repeat in range(repeats):
                for k, (count, size) in enumerate(plan):
                    run = asyncio.run(_one_run(url, batch, count, size, f"r{repeat}-{k}"))
                    runs.append({"repeat": repeat, **run})
    finally:
        ray.shutdown()
    return {
        "config": {"traces": str(path), "programs": programs, "workers": list(workers),
                   "leases": list(leases), "lease": lease, "repeats": repeats, "time_scale": time_scale},
        "ray_init_s": ray_init_s,
        "runs": runs,
        **run_metadata(["ray"]),
    }  # fmt: skip


def ray_table(result: dict[str, Any]) -> str:
    rows = []
    for run in result["runs"]:
        name = "one process" if not run["workers"] else f"ray {run['workers']}"
        rows.append((
            name, run["lease"] if run["workers"] else "-", run["repeat"], run["finished"],
            f"{run['wall_s']:.1f}", f"{run['startup_s']:.1f}", f"{run['programs_per_s']:.1f}",
            f"{run['lease_messages_per_program']:.2f}", run.get("lease_waits", "-"),
        ))  # fmt: skip
    headers = ["run", "lease", "rep", "programs", "wall s", "startup s", "programs/s", "msgs/prog", "waits"]
    by_config: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
    for run in result["runs"]:
        by_config.setdefault((run["workers"], run["lease"] if run["workers"] else None), []).append(run)
    medians = [
        (
            "one process" if not workers else f"ray {workers}", lease or "-",
            f"{statistics.median(r['startup_s'] for r in runs):.1f}",
            f"{statistics.median(r['programs_per_s'] for r in runs):.1f}",
            f"{statistics.median(r['lease_messages_per_program'] for r in runs):.2f}",
        )
        for (workers, lease), runs in by_config.items()
    ]  # fmt: skip
    summary = format_table(["run (median)", "lease", "startup s", "programs/s", "msgs/prog"], medians)
    return f"{format_table(headers, rows)}\n\n{summary}\nray.init: {result['ray_init_s']:.1f} s"
