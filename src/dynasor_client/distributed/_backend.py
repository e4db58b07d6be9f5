"""The driver of a batch over Ray: :class:`RayBackend` (see :mod:`._ray` for what runs where)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._log import new_id
from ..program import Program
from ..runtime import BatchRecorder, BatchResult, Runtime
from ._ray import LedgerActor, Outcome, WorkerActor, WorkerLost, WorkerState, import_ray
from ._setup import EndpointFactory, WorkerSetup

Call = tuple[WorkerState, int, int]  # the worker, the program's index, its attempt


@dataclass
class RayBackend:
    """Run a batch over a Ray cluster: ``await runtime.run_batch(programs, backend=RayBackend())``
    or ``run_batch_sync(endpoint, programs, backend=RayBackend(), token_budget=...)``.

    Args:
        workers: Ray actors (processes) that each run a runtime; a dead one is not replaced, its
            unfinished programs run again on the others.
        in_flight: programs each worker runs at once (more are sent as results come back);
            ``run_batch(concurrency=)`` bounds the batch's total.
        lease_tokens: tokens of the global budget a worker takes per lease: the cost of
            distribution (a worker may hold up to about one lease unspent that others cannot use;
            pressure and reallocation see other workers' spending one message late). Make it
            larger than one request's reservation (``n x max_tokens`` plus its prompt; 1,024 a
            sequence without ``max_tokens``), else such requests wait for a message each.
        endpoint: builds the endpoint in each worker (default: the runtime's :class:`Endpoint`
            rebuilt from its URL and settings; give one for a pool, an API key or headers).
        worker_options: Ray actor options of each worker (default one CPU each).
        init_options: ``ray.init`` options when Ray is not initialised yet (default: a local
            cluster without the dashboard, left running for the next batch).
        id_prefix: program ids are ``<prefix>-<index>`` (``.<attempt>`` when run again); default a
            fresh ``batch-...`` per batch.
        on_settled: called in the driver after each program settles, with its index and the
            workers' states (pids, programs in flight).

    After a batch, :attr:`last_stats` holds the ledger's figures and each worker's report.
    """

    workers: int = 2
    in_flight: int = 16
    lease_tokens: int = 32768
    endpoint: EndpointFactory | None = None
    worker_options: Mapping[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    init_options: Mapping[str, Any] = field(default_factory=dict)
    id_prefix: str | None = None
    on_settled: Callable[[int, Sequence[WorkerState]], None] | None = None
    last_stats: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("workers", "in_flight", "lease_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    async def run_batch(
        self,
        runtime: Runtime,
        programs: Sequence[Program],
        *,
        concurrency: int | None,
        progress: bool,
        desc: str | None,
        save_to: str | Path | None,
        deadline_s: float | None,
    ) -> BatchResult:
        if not programs:
            empty = BatchRecorder(0, progress=False, desc=desc, save_to=save_to)
            runtime.last_batch = empty.batch
            return empty.close({"backend": "ray", "programs": 0}, "")
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(**{"include_dashboard": False, "log_to_driver": False, **self.init_options})
        setup = await WorkerSetup.of(runtime, self.endpoint, self.lease_tokens)
        ledger = None
        if setup.budget.leased:
            ledger = ray.remote(LedgerActor).options(num_cpus=0, max_restarts=0).remote(setup.budget.total)
        worker_class = ray.remote(WorkerActor)
        options = {"max_restarts": 0, "max_task_retries": 0, **self.worker_options}
        actors = [worker_class.options(**options).remote(setup, ledger, f"w{i}") for i in range(self.workers)]
        run = _Run(self, ray, programs, concurrency, deadline_s, ledger)
        recorder = BatchRecorder(len(programs), progress=progress, desc=desc, save_to=save_to)
        runtime.last_batch = recorder.batch
        try:
            started = time.perf_counter()
            pids = await asyncio.gather(*(actor.start.remote() for actor in actors))
            run.startup_s = time.perf_counter() - started
            named = enumerate(zip(pids, actors, strict=True))
            run.states = [WorkerState(f"w{i}", pid, actor) for i, (pid, actor) in named]
            await run.drive(recorder)
        except BaseException:
            recorder.batch.interrupted = True
            run.cancel()
            raise
        finally:
            stats = await run.finish(actors, interrupted=recorder.batch.interrupted)
            self.last_stats = stats
            if setup.budget.total is not None:
                runtime.budget.spent += int(stats["spent"])
            recorder.close(stats, _summary(stats))
        return recorder.batch


class _Run:
    """One batch's dispatch: the queue, the calls in flight, the workers."""

    def __init__(
        self,
        backend: RayBackend,
        ray: Any,
        programs: Sequence[Program],
        concurrency: int | None,
        deadline_s: float | None,
        ledger: Any,
    ) -> None:
        self.backend, self.ray, self.programs, self.deadline_s, self.ledger = (
            backend, ray, programs, deadline_s, ledger,
        )  # fmt: skip
        self.limit = concurrency or max(len(programs), 1)
        self.prefix = backend.id_prefix or new_id("batch")
        self.queue = collections.deque((index, 0) for index in range(len(programs)))
        self.calls: dict[asyncio.Future[Outcome], Call] = {}
        self.refs: dict[asyncio.Future[Outcome], Any] = {}
        self.states: list[WorkerState] = []
        self.reruns = 0
        self.startup_s: float | None = None  # until every worker's runtime was up

    def program_id(self, index: int, attempt: int) -> str:
        return f"{self.prefix}-{index}" + (f".{attempt}" if attempt else "")

    def fill(self, recorder: BatchRecorder) -> None:
        """Send queued programs to the least busy live workers with room."""
        while self.queue and len(self.calls) < self.limit:
            room = [w for w in self.states if w.alive and len(w.running) < self.backend.in_flight]
            if not room:
                return
            worker = min(room, key=lambda w: len(w.running))
            index, attempt = self.queue.popleft()
            try:
                ref = worker.actor.run.remote(
                    index, self.program_id(index, attempt), self.programs[index], self.deadline_s
                )
            except Exception as exc:  # it could not be pickled
                error = TypeError(f"program {index} cannot be sent to a Ray worker: {exc}")
                recorder.settle(index, None, error)
                continue
            call: asyncio.Future[Outcome] = asyncio.wrap_future(ref.future())
            self.calls[call], self.refs[call] = (worker, index, attempt), ref
            worker.running.add(index)

    async def drive(self, recorder: BatchRecorder) -> None:
        actor_error = self.ray.exceptions.RayActorError
        while recorder.settled < len(self.programs):
            self.fill(recorder)
            if not self.calls:
                lost = WorkerLost("every Ray worker of the batch died: the unfinished programs did not run")
                for index, _ in self.queue:
                    recorder.settle(index, None, lost)
                self.queue.clear()
                return
            done, _ = await asyncio.wait(self.calls, return_when=asyncio.FIRST_COMPLETED)
            for call in done:
                worker, index, attempt = self.calls.pop(call)
                del self.refs[call]
                worker.running.discard(index)
                try:
                    outcome = call.result()
                except actor_error:
                    await self.lose(worker)
                    self.queue.appendleft((index, attempt + 1))  # first in line, on another worker
                    self.reruns += 1
                    continue
                except Exception as exc:
                    outcome = Outcome(index, None, exc)
                worker.finished += 1
                recorder.settle(index, outcome.result, outcome.error)
                if self.backend.on_settled is not None:
                    self.backend.on_settled(index, self.states)

    async def lose(self, worker: WorkerState) -> None:
        """``worker`` died (or cannot be reached: it is killed, so it spends nothing more): what it
        held of the budget is written off."""
        if not worker.alive:
            return
        worker.alive = False
        self.ray.kill(worker.actor, no_restart=True)
        if self.ledger is not None:
            await self.ledger.lose.remote(worker.name)

    def cancel(self) -> None:
        for ref in self.refs.values():
            self.ray.cancel(ref)

    async def finish(self, actors: list[Any], *, interrupted: bool) -> dict[str, Any]:
        """Stop the workers (their reports) and the ledger (its figures)."""
        reports: list[Any] = []
        live = [w for w in self.states if w.alive]
        if not interrupted and live:
            reports = await asyncio.gather(*(w.actor.stop.remote() for w in live), return_exceptions=True)
        ledger: dict[str, Any] = {}
        if self.ledger is not None:
            try:
                ledger = await self.ledger.stats.remote()
            except self.ray.exceptions.RayError:  # the ledger died: its figures with it
                ledger = {}
            self.ray.kill(self.ledger)
        for actor in actors:
            self.ray.kill(actor)
        return _stats(self, [r for r in reports if isinstance(r, dict)], ledger)


def _stats(run: _Run, reports: list[dict[str, Any]], ledger: dict[str, Any]) -> dict[str, Any]:
    """The batch's figures: the workers' metrics summed, the ledger's, the re-runs."""
    outcomes: collections.Counter[str] = collections.Counter()
    tokens: collections.Counter[str] = collections.Counter()
    for report in reports:
        outcomes.update(report["metrics"]["outcomes"])
        tokens.update(report["metrics"]["tokens"])
    programs = len(run.programs)
    spent = int(ledger["spent"]) if "spent" in ledger else sum(int(r["spent"]) for r in reports)
    return {
        "backend": "ray",
        "workers": len(run.states),
        "workers_lost": sum(not w.alive for w in run.states),
        "reruns": run.reruns,
        "startup_s": run.startup_s,
        "programs": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "requests": sum(int(r["metrics"]["requests"]) for r in reports),
        "tokens": dict(tokens),
        "spent": spent,
        "lease_messages": ledger.get("messages", 0),
        "lease_messages_per_program": ledger.get("messages", 0) / programs if programs else 0.0,
        "ledger": ledger,
        "per_worker": reports,
    }


def _summary(stats: dict[str, Any]) -> str:
    rows = [
        ("workers (lost)", f"{stats['workers']} ({stats['workers_lost']})"),
        ("programs run again", str(stats["reruns"])),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(stats["outcomes"].items())) or "-"),
        ("requests", str(stats["requests"])),
        ("tokens spent (budget)", str(stats["spent"])),
        (
            "lease messages (per program)",
            f"{stats['lease_messages']} ({stats['lease_messages_per_program']:.2f})",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
