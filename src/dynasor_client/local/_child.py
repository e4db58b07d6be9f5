"""The child process that hosts llama.cpp's HTTP server (started by :class:`LocalLlamaServer`).

``xllamacpp.Server`` serves from background threads of the process that created it until that
process ends, so it lives in a process of its own::

    python -m dynasor_client.local._child --model PATH --host H --port P --n-parallel N \\
        --n-ctx-per-slot C --threads T --alias A

:class:`LocalLlamaServer` runs this file as a script (``python .../_child.py ...``), which avoids
importing the whole ``dynasor_client`` package first: keep this module free of package imports.

The process exits with status 0 on SIGTERM or as soon as its parent dies (it polls
``os.getppid()``, and then deletes ``--log-file``), with :data:`EXIT_START_FAILED` when llama.cpp
refuses to start (bad model file, port taken: llama.cpp's own log on stderr says which) and with
:data:`EXIT_NO_XLLAMACPP` when ``xllamacpp`` is not installed. Ctrl+C (SIGINT) is ignored: the
parent owns the lifetime.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

EXIT_START_FAILED = 2
EXIT_NO_XLLAMACPP = 3
READY_MARKER = "dynasor-client: llama.cpp server listening on"

# How often the main loop checks whether the parent is still alive (seconds).
_PARENT_POLL_S = 0.5
# llama.cpp log threshold: 1 = errors, 2 = + warnings, 3 = + info (one block of lines per request).
_DEFAULT_VERBOSITY = 2


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dynasor_client.local._child",
        description="Serve a GGUF model with llama.cpp's OpenAI-compatible server (internal).",
    )
    parser.add_argument("--model", required=True, help="path of the .gguf model file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n-parallel", type=int, default=8, help="number of slots (parallel sequences)")
    parser.add_argument("--n-ctx-per-slot", type=int, default=2048, help="context length of each slot")
    parser.add_argument("--threads", type=int, default=-1, help="CPU threads (-1: llama.cpp decides)")
    parser.add_argument("--alias", default=None, help="model id reported by /v1/models")
    parser.add_argument("--verbosity", type=int, default=_DEFAULT_VERBOSITY, help="llama.cpp log level")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--log-file", default=None, help="our log file: deleted if the parent dies first")
    return parser.parse_args(argv)


def _build_params(xllamacpp: Any, args: argparse.Namespace) -> Any:
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.n_parallel
    # The KV cache is shared by all slots: give each slot n_ctx_per_slot tokens.
    params.n_ctx = args.n_ctx_per_slot * args.n_parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_slots = True
    params.endpoint_metrics = True
    params.verbosity = args.verbosity
    if args.alias:
        params.model_alias = {args.alias}  # a set of names; the first one is the id in /v1/models
    return params


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or the parent's death; returns the exit status."""
    args = _parse_args(argv)
    parent = args.parent_pid if args.parent_pid is not None else os.getppid()
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    try:
        import xllamacpp
    except ImportError as exc:
        print(
            f"dynasor-client: cannot import xllamacpp ({exc}); install it with "
            "pip install 'dynasor-client[local]'",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_NO_XLLAMACPP

    params = _build_params(xllamacpp, args)
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:
        # llama.cpp has already logged the reason (model load error, port in use) on stderr.
        print(f"dynasor-client: llama.cpp server failed to start: {exc}", file=sys.stderr, flush=True)
        return EXIT_START_FAILED
    # The parent waits for this line: it proves that *this* process holds the port (a /health answer
    # alone could come from another server already listening there).
    print(f"{READY_MARKER} {server.listening_address}", file=sys.stderr, flush=True)

    orphaned = False
    while not stop.is_set():
        if os.getppid() != parent:  # re-parented: our parent is gone
            orphaned = True
            break
        stop.wait(_PARENT_POLL_S)
    if orphaned and args.log_file:
        # Nobody is left to read or delete the log: delete it ourselves (we keep it open meanwhile).
        with contextlib.suppress(OSError):
            os.unlink(args.log_file)

    # Shut llama.cpp down gracefully, but never hang on it: the watchdog ends the process regardless.
    watchdog = threading.Timer(3.0, os._exit, args=(0,))
    watchdog.daemon = True
    watchdog.start()
    del server
    sys.stderr.flush()
    # Skip interpreter teardown: native server threads and Python finalizers do not mix well.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
