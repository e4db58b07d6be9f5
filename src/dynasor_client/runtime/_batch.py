"""Batch use: run a list of programs under a concurrency bound, with a progress bar, results in order.

On interruption (Ctrl-C, an exception, a cancelled notebook cell) every finished result is kept:
in ``runtime.last_batch``, in the JSON lines of ``save_to`` (written as programs finish), and, from
:func:`run_batch_sync`, in the partial :class:`BatchResult` it returns.
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
from typing import IO, TYPE_CHECKING, Any

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


async def run_batch(
    runtime: Runtime,
    programs: Sequence[Program],
    *,
    concurrency: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    save_to: str | Path | None = None,
    deadline_s: float | None = None,
) -> BatchResult:
    """Run ``programs`` on ``runtime`` (module docs); per-program failures are recorded, not raised."""
    from tqdm.auto import tqdm

    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    batch = BatchResult([None] * len(programs))
    runtime.last_batch = batch
    started = time.perf_counter()
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    sink: IO[str] | None = Path(save_to).open("a", encoding="utf-8") if save_to else None  # noqa: ASYNC230, SIM115
    handles: list[ProgramHandle] = []
    settled: list[int] = []
    all_done = asyncio.Event()
    bar = tqdm(total=len(programs), desc=desc or "programs", disable=not progress, leave=True)

    def done(index: int, handle: ProgramHandle) -> None:
        error: BaseException | None = None
        try:
            batch.results[index] = handle.result()
        except BaseException as exc:
            batch.errors[index] = error = exc
        if sink is not None:
            sink.write(json.dumps(result_record(index, batch.results[index], error), default=str) + "\n")
            sink.flush()
        if slots is not None:
            slots.release()
        bar.update(1)
        settled.append(index)
        if len(settled) == len(programs):
            all_done.set()

    try:
        for index, program in enumerate(programs):
            if slots is not None:
                await slots.acquire()
            handle = runtime.submit(program, deadline_s=deadline_s)
            handle.add_done_callback(functools.partial(_call_done, done, index))
            handles.append(handle)
        if programs:
            await all_done.wait()
    except BaseException:
        batch.interrupted = True
        for handle in handles:
            handle.cancel()
        raise
    finally:
        bar.close()
        if sink is not None:
            sink.close()
        batch.elapsed_s = time.perf_counter() - started
        batch.metrics = runtime.metrics.as_dict()
        batch.summary = runtime.metrics.summary()
    return batch


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
    **runtime_options: Any,
) -> BatchResult:
    """:func:`run_batch` for scripts: its own event loop and :class:`Runtime`. Ctrl-C returns the
    partial result (``interrupted=True``) instead of losing it. In a notebook or other async code,
    ``await runtime.run_batch(...)`` instead."""
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
                deadline_s=deadline_s,
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
