"""Batch use: run a list of programs under a concurrency bound, with a progress bar, results in order.

On interruption (Ctrl-C, an exception, a cancelled notebook cell) every finished result is kept:
in ``runtime.last_batch``, in the JSON lines of ``save_to`` (written as programs finish), and, from
:func:`run_batch_sync`, in the partial :class:`BatchResult` it returns.

A :class:`BatchBackend` runs the batch elsewhere (``backend=``: over a Ray cluster with
:class:`dynasor_client.distributed.RayBackend`); it reports through the same :class:`BatchRecorder`
(results in input order, progress bar, ``save_to``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..endpoints import Endpoint, EndpointPool
from ..program import ProgramResult

if TYPE_CHECKING:
    from ..program import Program
    from ._runtime import ProgramHandle, Runtime


@dataclass
class BatchResult:
    """Results in input order (None where a program failed, was cancelled or never ran)."""

    results: list[ProgramResult | None]
    errors: dict[int, BaseException] = field(default_factory=dict)
    interrupted: bool = False
    elapsed_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def finished(self) -> int:
        return sum(r is not None for r in self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[ProgramResult | None]:
        """The results in input order: ``for question, result in zip(questions, batch)``."""
        return iter(self.results)

    def __getitem__(self, index: int) -> ProgramResult | None:
        return self.results[index]

    def answers(self) -> list[str | None]:
        return [None if r is None else r.answer for r in self.results]


def result_record(index: int, result: ProgramResult | None, error: BaseException | None) -> dict[str, Any]:
    """One JSON-lines record of a batch (``save_to``)."""
    if result is None:
        return {"index": index, "error": f"{type(error).__name__}: {error}"}
    out = dataclasses.asdict(result)
    out["tokens"] = result.tokens.as_dict()
    out["stop_reason"] = result.stop_reason.value
    return {"index": index, **out}


class BatchBackend(Protocol):
    """Where a batch runs when not in the runtime's own process (``run_batch(..., backend=)``): it
    takes the runtime's endpoint, budget and options, and returns the same :class:`BatchResult`."""

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
    ) -> BatchResult: ...


class BatchRecorder:
    """The bookkeeping of one batch wherever its programs run: results in input order (each index
    settled once: a second result for it is an error), the progress bar, the ``save_to`` JSON lines;
    ``await wait()`` until every program settled."""

    def __init__(self, total: int, *, progress: bool, desc: str | None, save_to: str | Path | None) -> None:
        from tqdm.auto import tqdm

        self.batch = BatchResult([None] * total)
        self.started = time.perf_counter()
        self._settled = [False] * total
        self._count = 0
        self._closed = False
        self._all_done = asyncio.Event()
        if total == 0:
            self._all_done.set()
        self._sink: IO[str] | None = Path(save_to).open("a", encoding="utf-8") if save_to else None  # noqa: SIM115
        self._bar = tqdm(total=total, desc=desc or "programs", disable=not progress, leave=True)

    @property
    def settled(self) -> int:
        """How many programs settled so far."""
        return self._count

    def is_settled(self, index: int) -> bool:
        return self._settled[index]

    def settle(self, index: int, result: ProgramResult | None, error: BaseException | None) -> None:
        """Program ``index`` ended with ``result`` or ``error``. After :meth:`close` (a batch
        interrupted twice: programs still ending) only the batch records it: the file is closed."""
        if self._settled[index]:
            raise RuntimeError(f"program {index} of the batch settled twice")
        self._settled[index] = True
        if result is not None:
            self.batch.results[index] = result
        else:
            self.batch.errors[index] = error = error or RuntimeError("no result")
        if self._closed:
            return
        if self._sink is not None:
            self._sink.write(json.dumps(result_record(index, result, error), default=str) + "\n")
            self._sink.flush()
        self._bar.update(1)
        self._count += 1
        if self._count == len(self._settled):
            self._all_done.set()

    async def wait(self) -> None:
        """Until every program settled."""
        await self._all_done.wait()

    def close(self, metrics: dict[str, Any], summary: str) -> BatchResult:
        self._closed = True
        self._bar.close()
        if self._sink is not None:
            self._sink.close()
        self.batch.elapsed_s = time.perf_counter() - self.started
        self.batch.metrics, self.batch.summary = metrics, summary
        return self.batch


async def run_batch(
    runtime: Runtime,
    programs: Sequence[Program],
    *,
    concurrency: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    save_to: str | Path | None = None,
    deadline_s: float | None = None,
    backend: BatchBackend | None = None,
) -> BatchResult:
    """Run ``programs`` on ``runtime`` (module docs); per-program failures are recorded, not raised."""
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if backend is not None:
        return await backend.run_batch(
            runtime, programs, concurrency=concurrency, progress=progress, desc=desc, save_to=save_to,
            deadline_s=deadline_s,
        )  # fmt: skip
    recorder = BatchRecorder(len(programs), progress=progress, desc=desc, save_to=save_to)
    runtime.last_batch = recorder.batch
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    handles: list[ProgramHandle] = []

    def done(index: int, handle: ProgramHandle) -> None:
        result: ProgramResult | None = None
        error: BaseException | None = None
        try:
            result = handle.result()
        except BaseException as exc:
            error = exc
        recorder.settle(index, result, error)
        if slots is not None:
            slots.release()

    try:
        for index, program in enumerate(programs):
            if slots is not None:
                await slots.acquire()
            handle = runtime.submit(program, deadline_s=deadline_s)
            handle.add_done_callback(functools.partial(_call_done, done, index))
            handles.append(handle)
        await recorder.wait()
    except BaseException:
        recorder.batch.interrupted = True
        for handle in handles:
            handle.cancel()
        # How each one ended (a result that came in meanwhile, or its cancellation) is recorded
        # before the file closes.
        await asyncio.gather(*handles, return_exceptions=True)
        raise
    finally:
        recorder.close(runtime.metrics.as_dict(), runtime.metrics.summary())
    return recorder.batch


def _call_done(done: Callable[[int, ProgramHandle], None], index: int, handle: ProgramHandle) -> None:
    done(index, handle)


def run_batch_sync(
    endpoint: Endpoint | EndpointPool,
    programs: Sequence[Program],
    *,
    concurrency: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    save_to: str | Path | None = None,
    deadline_s: float | None = None,
    backend: BatchBackend | None = None,
    **runtime_options: Any,
) -> BatchResult:
    """:func:`run_batch` for scripts: its own event loop and :class:`Runtime`. Ctrl-C returns the
    partial result (``interrupted=True``) instead of losing it. In a notebook or other async code,
    ``await runtime.run_batch(...)`` instead. ``backend``: where the batch runs (a
    :class:`BatchBackend`; None: in this process)."""
    from ._runtime import Runtime

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run_batch_sync() cannot run inside an event loop (a notebook, async code): "
            "use `async with Runtime(endpoint) as runtime: await runtime.run_batch(programs)`"
        )
    runtime = Runtime(endpoint, **runtime_options)

    async def main() -> BatchResult:
        async with runtime:
            return await run_batch(
                runtime,
                programs, concurrency=concurrency, progress=progress, desc=desc, save_to=save_to,
                deadline_s=deadline_s, backend=backend,
            )  # fmt: skip

    try:
        result: BatchResult = asyncio.run(main())
        return result
    except KeyboardInterrupt:
        batch: BatchResult | None = runtime.last_batch
        if batch is None:
            raise
        batch.interrupted = True
        warnings.warn(
            f"interrupted: returning {batch.finished} of {len(batch)} results", RuntimeWarning, stacklevel=2
        )
        return batch
