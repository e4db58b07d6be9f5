"""Symbolic equality through math-verify, in worker processes, under a hard timeout.

sympy can run for minutes (or forever) on an innocent-looking answer such as ``2^{2^{2^{2^{100}}}}``.
Every check therefore runs in a worker process (a few at most, started on first use and warmed
before the first timed check); the caller waits at most ``timeout_s`` for the answer. A check that
runs out of time counts as "not equal" and its worker is killed, so a runaway sympy call can never
block a later check; the next check that needs a worker starts a fresh one. Results (timeouts
included) are cached by the unordered pair of answers, so ``check(a, b) == check(b, a)`` always.

Why not a ``ProcessPoolExecutor``: with ``spawn``/``forkserver`` its workers re-import the
application's ``__main__`` (re-running any script without an ``if __name__ == "__main__"`` guard),
``fork`` is unsafe in a process with threads (asyncio, HTTP clients), and killing one of its workers
breaks the whole pool. The workers here are plain ``python -P`` processes running
:mod:`._worker`, talking one JSON line each way.

math-verify is optional (``pip install 'dynasor-client[math]'``); :data:`SYMBOLIC_AVAILABLE` says
whether it is installed. Without it every check answers False without starting anything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import queue
import subprocess
import sys
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

SYMBOLIC_AVAILABLE: bool = importlib.util.find_spec("math_verify") is not None
_WORKER_SCRIPT = str(Path(__file__).with_name("_worker.py"))
_STARTUP_TIMEOUT_S = 120.0


class _WorkerDied(Exception):
    pass


class _Worker:
    """One worker process and the thread that reads its replies."""

    def __init__(self, startup_timeout_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-u", _WORKER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="ascii",
        )
        self._replies: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None and self.process.stdin is not None
        self._stdin: IO[str] = self.process.stdin
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        try:
            if self._reply(startup_timeout_s) != "ready":
                raise _WorkerDied("the worker did not start")
        except BaseException:
            self.kill()
            raise

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._replies.put(line.strip())
        self._replies.put("")  # end of file: the process is gone

    def _reply(self, timeout_s: float) -> str:
        try:
            reply = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError from None
        if not reply:
            raise _WorkerDied("the worker exited")
        return reply

    def ask(self, a: str, b: str, timeout_s: float) -> bool:
        try:
            self._stdin.write(json.dumps([a, b]) + "\n")
            self._stdin.flush()
        except OSError as exc:
            raise _WorkerDied("the worker is gone") from exc
        return self._reply(timeout_s) == "1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a broken pipe on close
                    stream.close()


def _kill_all(workers: set[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class SymbolicChecker:
    """Symmetric, cached symbolic equality of two normalised answers under a hard timeout.

    Args:
        timeout_s: longest wait for one check; past it the answer is False and the worker is killed.
        max_workers: worker processes at most. A check blocks its calling thread; checks from several
            threads run in parallel up to this number, and waiting for a free worker does not count
            against a check's timeout (nor does starting one).
        cache_size: results kept (LRU over unordered pairs).
    """

    def __init__(self, timeout_s: float = 1.0, *, max_workers: int = 2, cache_size: int = 4096) -> None:
        if timeout_s <= 0 or max_workers < 1:
            raise ValueError("timeout_s must be > 0 and max_workers >= 1")
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self.cache_size = cache_size
        self.timeouts = 0  #: checks that ran out of time so far
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._starting = 0
        self._disabled = not SYMBOLIC_AVAILABLE or not sys.executable
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    def __call__(self, a: str, b: str) -> bool:
        """True when math-verify proves ``a`` and ``b`` equal within the timeout."""
        key = (a, b) if a <= b else (b, a)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        result = self._check(*key)
        if result is not None:
            with self._cache_lock:
                self._cache[key] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return bool(result)

    def _check(self, a: str, b: str) -> bool | None:
        """True/False, or None for "could not check" (not cached)."""
        worker = self._acquire()
        if worker is None:
            return None
        try:
            result = worker.ask(a, b, self.timeout_s)
        except TimeoutError:
            with self._cond:
                self.timeouts += 1
            logger.warning("symbolic check timed out after %.2fs: %.80r vs %.80r", self.timeout_s, a, b)
            self._release(worker, alive=False)
            return False
        except _WorkerDied:
            self._release(worker, alive=False)
            return None
        self._release(worker, alive=True)
        return result

    def _acquire(self) -> _Worker | None:
        with self._cond:
            while True:
                if self._closed or self._disabled:
                    return None
                if self._idle:
                    return self._idle.pop()
                if len(self._workers) + self._starting < self.max_workers:
                    self._starting += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker(_STARTUP_TIMEOUT_S)
        except Exception:
            logger.warning("symbolic checks disabled: the math-verify worker failed to start", exc_info=True)
            with self._cond:
                self._starting -= 1
                self._disabled = True
                self._cond.notify_all()
            return None
        with self._cond:
            self._starting -= 1
            self._workers.add(worker)
        return worker

    def _release(self, worker: _Worker, *, alive: bool) -> None:
        with self._cond:
            keep = alive and not self._closed
            if keep:
                self._idle.append(worker)
            else:
                self._workers.discard(worker)
            self._cond.notify()
        if not keep:
            worker.kill()

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers."""
        with self._cond:
            return [worker.pid for worker in self._workers]

    def close(self) -> None:
        """Stops the workers; later checks answer False without trying (cached results remain)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            for worker in idle:
                self._workers.discard(worker)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()
