"""The ``dynasor-client`` command.

Subcommands: ``demo`` (plain self-consistency vs certaindex on the embedded default model),
``serve-local`` (llama.cpp with SmolLM2 for people and other tools), ``generate`` and
``capabilities`` (against any endpoint),
``record`` (sample a dataset into a traces file, resumable),
``calibrate`` (choose a stop rule from labelled traces) and ``bench certaindex`` (hot-path speed),
``serve-replay`` (recorded traces as an OpenAI-compatible server with GPU-like timing) and
``bench replay`` (how many concurrent streams that server sustains).

One module per command group; each subcommand sets ``func``, which :func:`main` calls with the
parsed arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from .._exceptions import DynasorError
from ._bench import add_bench_parser
from ._calibrate import add_calibrate_parser
from ._demo import add_demo_parser
from ._endpoint import add_capabilities_parser, add_generate_parser
from ._local import add_serve_local_parser
from ._proxy import add_proxy_parser
from ._record import add_record_parser
from ._replay import add_serve_replay_parser

__all__ = ["build_parser", "main"]


DESCRIPTION = (
    "Certaindex-driven reasoning programs over any OpenAI-compatible server: run the demo, serve the "
    "embedded model or recorded traces, record and calibrate, benchmark, or put the proxy in front of "
    "an agent pipeline."
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # Identity, not ==: a default of 0 is worth showing, False (a flag) is not.
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text
        if isinstance(default, list | tuple) and not default:
            return text
        return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Gives every (sub)command the formatter, so each module need not pass it."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynasor-client", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    add_serve_local_parser(sub)
    add_generate_parser(sub)
    add_capabilities_parser(sub)
    add_record_parser(sub)
    add_calibrate_parser(sub)
    add_bench_parser(sub)
    add_serve_replay_parser(sub)
    add_proxy_parser(sub)
    _show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int | None = args.func(args)
    except (DynasorError, ValueError) as exc:
        print(f"dynasor-client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if code is None else code
