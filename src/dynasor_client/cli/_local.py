"""``dynasor-client serve-local``: the embedded llama.cpp server with SmolLM2, for people and tools."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_serve_local_parser"]


def add_serve_local_parser(sub: Subparsers) -> None:
    serve = sub.add_parser("serve-local", help="serve SmolLM2-135M-Instruct with llama.cpp on 127.0.0.1")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: a free port")
    serve.add_argument("--n-parallel", type=int, default=8, help="parallel sequences = largest n accepted")
    serve.add_argument("--n-ctx-per-slot", type=int, default=2048)
    serve.set_defaults(func=_serve_local)


def _serve_local(args: argparse.Namespace) -> None:
    from ..local import LocalLlamaServer, serve_forever

    serve_forever(
        LocalLlamaServer(
            host=args.host, port=args.port, n_parallel=args.n_parallel, n_ctx_per_slot=args.n_ctx_per_slot
        )
    )
