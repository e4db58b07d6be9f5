"""``dynasor-client serve-replay``: recorded traces as an OpenAI-compatible server timed like a GPU."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_serve_replay_parser"]


def add_serve_replay_parser(sub: Subparsers) -> None:
    replay = sub.add_parser(
        "serve-replay",
        help="answer OpenAI-compatible requests from recorded traces, timed like a GPU",
        description="Needs the [server] extra. The rules (matching, draws, probes, tokens) are documented "
        "in dynasor_client.replay.",
    )
    replay.add_argument("--traces", required=True, help="traces file (JSON lines, shared/data/traces format)")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=None, help="default: a free port")
    replay.add_argument("--profile", default="llama3-8b-h100-80gb", help="GPU profile name or JSON file")
    replay.add_argument("--time-scale", type=float, default=1.0, help="wall s per modelled s (0: no waiting)")
    replay.add_argument("--seed", type=int, default=0, help="seed of the per-program sample draws")
    replay.add_argument("--logprobs-shape", choices=["auto", "chat", "legacy"], default="auto")
    replay.add_argument("--probe-fallback", choices=["explicit", "math", "none"], default="explicit")
    replay.add_argument("--flush-interval", type=float, default=0.05, help="least seconds between SSE events")
    replay.set_defaults(func=_serve_replay)


def _serve_replay(args: argparse.Namespace) -> None:
    try:
        from ..replay import serve_replay
    except ImportError as exc:
        raise ValueError(
            f"serve-replay needs the server extra: pip install 'dynasor-client[server]' ({exc})"
        ) from exc
    try:
        serve_replay(
            args.traces,
            host=args.host,
            port=args.port,
            profile=args.profile,
            time_scale=args.time_scale,
            seed=args.seed,
            logprobs_shape=args.logprobs_shape,
            probe_fallback=args.probe_fallback,
            flush_interval_s=args.flush_interval,
        )
    except OSError as exc:  # a missing traces file: a usage error, not a crash
        raise ValueError(str(exc)) from exc
