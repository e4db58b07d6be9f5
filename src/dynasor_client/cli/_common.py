"""What the command groups share: the subparsers type and the options that name an endpoint."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]  # add_subparsers()

__all__ = ["Subparsers", "add_endpoint_args"]


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``, ``--model`` and ``--api-key``."""
    from_env = os.environ.get("OPENAI_BASE_URL") or None
    parser.add_argument(
        "--endpoint",
        required=from_env is None,
        default=from_env,
        help="API root including /v1, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)",
    )
    parser.add_argument("--model", default=None, help="model name (default: the first /v1/models lists)")
    parser.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
