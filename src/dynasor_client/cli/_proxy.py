"""``dynasor-client proxy``: the command's flags and what it does (imports the server extra lazily)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import typing
from typing import TYPE_CHECKING, Any

from ..endpoints import Capabilities

if TYPE_CHECKING:
    from ..proxy import ProxyConfig
    from ._common import Subparsers

__all__ = ["add_proxy_parser", "build_config"]

UPSTREAM_KEY_ENV = "DYNASOR_UPSTREAM_API_KEY"
PROXY_KEYS_ENV = "DYNASOR_PROXY_API_KEYS"

DESCRIPTION = f"""\
An OpenAI-compatible server in front of --upstream. Requests without a dynasor option pass through
untouched (streamed as upstream streams them). A request picks a technique with
extra_body={{"dynasor": {{"algorithm": "sc", "n": 8}}}} or a model suffix (model="qwen+sc8", "+bon16",
"+cot-high"); see dynasor_client.proxy for every option and extension field.

Keys: --api-key (repeatable), --api-keys-file (lines 'KEY [TOKEN_BUDGET] [admin]') or
${PROXY_KEYS_ENV} (comma-separated) make the proxy require one of them; none of these: no key
required. --admin-key (repeatable) names a key that may read every key's /dynasor/stats (added,
without a budget, when no other option lists it). The upstream key comes from --upstream-api-key
or ${UPSTREAM_KEY_ENV}; keys are never logged.
"""


def add_proxy_parser(sub: Subparsers) -> None:
    """Add the ``proxy`` subcommand to ``sub``."""
    p = sub.add_parser(
        "proxy",
        help="an OpenAI-compatible server applying certaindex-driven techniques per request",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--upstream", required=True, help="upstream API root including /v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8100, help="default 8100 (0: a free port)")
    p.add_argument(
        "--model", default=None, help="upstream model of the dynasor programs (default: first listed)"
    )
    p.add_argument(
        "--upstream-api-key", default=None, help=f"the proxy's upstream key (default: ${UPSTREAM_KEY_ENV})"
    )
    p.add_argument(
        "--forward-client-key",
        action="store_true",
        help="send the client's own key upstream on pass-through requests",
    )
    p.add_argument("--api-key", action="append", default=[], help="a key clients must present (repeatable)")
    p.add_argument(
        "--api-keys-file", default=None, help="keys file: one 'KEY [TOKEN_BUDGET] [admin]' per line"
    )
    p.add_argument(
        "--admin-key",
        action="append",
        default=[],
        help="a key that may read every key's /dynasor/stats (repeatable; added if not listed)",
    )
    p.add_argument(
        "--key-token-budget", type=_positive_int, default=None, help="token budget of keys without their own"
    )
    p.add_argument(
        "--token-budget", type=_positive_int, default=None, help="tokens all requests together may spend"
    )
    p.add_argument(
        "--capabilities",
        type=_capabilities_arg,
        default=None,
        help="upstream capabilities: 'replay', or a JSON file from `dynasor-client capabilities` "
        "(default: probe the upstream on the first dynasor request)",
    )
    p.add_argument(
        "--reward",
        default="judge",
        help="the default reward model of best_of_n, rebase and mcts: 'judge', 'pooling' or a "
        "/pooling server's API root",
    )
    p.add_argument(
        "--max-in-flight", type=_positive_int, default=64, help="upstream requests in flight at once"
    )
    p.add_argument("--timeout", type=_seconds, default=600.0, help="seconds to wait for upstream reads")
    p.add_argument(
        "--no-meter-streams",
        action="store_true",
        help="forward pass-through streams byte for byte (no include_usage added; tokens estimated)",
    )
    limits = p.add_argument_group("limits", "see docs/proxy.md, 'Limits'")
    limits.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=16 * 1024 * 1024,
        help="largest request body (413 above it; default 16 MiB)",
    )
    limits.add_argument(
        "--max-error-body-bytes",
        type=_positive_int,
        default=64 * 1024,
        help="how much of an upstream error body is read (default 64 KiB)",
    )
    limits.add_argument(
        "--max-n",
        type=_positive_int,
        default=16,
        help="most n of a pass-through request, never above --max-in-flight (400 above it; default 16)",
    )
    limits.add_argument(
        "--max-tokens",
        type=_optional_positive_int,
        default=65536,
        help="most max_tokens of a request, and of a technique's chunk or step (400 above it; "
        "'none': no limit; default 65536)",
    )
    limits.add_argument(
        "--max-samples",
        type=_positive_int,
        default=64,
        help="most samples of a technique: dynasor.n (sc, bon) and dynasor.width (rebase) "
        "(400 above it; default 64)",
    )
    limits.add_argument(
        "--stream-buffer",
        type=_positive_int,
        default=64,
        help="events queued for a client; the upstream is not read while they are unread (default 64)",
    )
    limits.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=60.0,
        help="seconds a client may leave its stream unread before it is aborted (default 60)",
    )
    limits.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        help="seconds a connection has to send a request's headers (default 10)",
    )
    limits.add_argument(
        "--max-header-bytes",
        type=_positive_int,
        default=64 * 1024,
        help="largest request line and headers (431 above it; default 64 KiB)",
    )
    limits.add_argument(
        "--max-connections",
        type=_optional_positive_int,
        default=1024,
        help="connections and requests at once, 503 beyond ('none': no limit; default 1024)",
    )
    limits.add_argument(
        "--keep-alive",
        type=_seconds,
        default=5.0,
        help="seconds an idle keep-alive connection is kept (default 5)",
    )
    shared = p.add_argument_group(
        "replicas", "see docs/distributed.md, 'Proxy replicas sharing budgets through Redis'"
    )
    shared.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="keep key budgets and usage in this Redis (redis://HOST:PORT/DB), shared by every replica "
        "on it; budgeted keys get 503 while it cannot be reached (default: in this process)",
    )
    shared.add_argument(
        "--reservation-ttl",
        type=_seconds,
        default=30.0,
        help="with --redis: seconds a request's reservation outlives a replica that died (default 30)",
    )
    p.add_argument("--access-log", action="store_true", help="uvicorn's access log (paths only, never keys)")
    p.set_defaults(func=proxy_command)


def build_config(args: argparse.Namespace) -> ProxyConfig:
    """The :class:`~dynasor_client.proxy.ProxyConfig` of parsed ``proxy`` arguments (ValueError when
    invalid)."""
    from ..proxy import KeyStore, ProxyConfig

    keys: KeyStore | None = None
    listed = [
        *args.api_key,
        *filter(None, (k.strip() for k in os.environ.get(PROXY_KEYS_ENV, "").split(","))),
    ]
    if listed:
        keys = KeyStore(listed, default_budget=args.key_token_budget)
    if args.api_keys_file:
        try:
            from_file = KeyStore.from_file(args.api_keys_file, default_budget=args.key_token_budget)
        except OSError as exc:
            raise ValueError(f"cannot read the keys file: {exc}") from exc
        keys = from_file if keys is None else keys.merged(from_file)
    if args.admin_key:
        keys = KeyStore([], admins=args.admin_key) if keys is None else keys.with_admins(args.admin_key)
    return ProxyConfig(
        upstream=args.upstream,
        model=args.model,
        upstream_api_key=args.upstream_api_key or os.environ.get(UPSTREAM_KEY_ENV) or None,
        upstream_auth="forward" if args.forward_client_key else "own",
        keys=keys,
        token_budget=args.token_budget,
        capabilities=_capabilities(args.capabilities),  # parsed already on the command line
        timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
        reward=args.reward,
        meter_streams=not args.no_meter_streams,
        max_body_bytes=args.max_body_bytes,
        max_error_body_bytes=args.max_error_body_bytes,
        max_n=args.max_n,
        max_tokens=args.max_tokens,
        max_samples=args.max_samples,
        stream_buffer=args.stream_buffer,
        stall_timeout_s=args.stall_timeout,
        header_timeout_s=args.header_timeout,
        max_header_bytes=args.max_header_bytes,
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive,
        redis=args.redis,
        reservation_ttl_s=args.reservation_ttl,
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: a free port), got {port}")
    return port


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _optional_positive_int(value: str) -> int | None:
    return None if value.strip().lower() == "none" else _positive_int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {value!r}")
    return seconds


def _capabilities_arg(value: str) -> Capabilities:
    try:
        caps = _capabilities(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert caps is not None
    return caps


def _capabilities(value: str | Capabilities | None) -> Capabilities | None:
    """``--capabilities``: 'replay' or a JSON file of :class:`Capabilities` fields, every field
    checked against its type (ValueError naming the first wrong one)."""
    if value is None or isinstance(value, Capabilities):
        return value
    if value == "replay":
        from ..replay import REPLAY_CAPABILITIES

        return REPLAY_CAPABILITIES
    try:
        with open(value, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read capabilities from {value}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{value}: capabilities must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(Capabilities)
    fields = {f.name for f in dataclasses.fields(Capabilities)}
    chosen = {k: v for k, v in data.items() if k in fields}
    for name, field_value in chosen.items():
        if not _fits(field_value, hints[name]):
            raise ValueError(
                f"{value}: capability {name!r} must be {_describe(hints[name])}, got {field_value!r}"
            )
    if chosen.get("max_n") is not None and chosen["max_n"] < 1:
        raise ValueError(f"{value}: capability 'max_n' must be >= 1 or null, got {chosen['max_n']!r}")
    if chosen.get("max_top_logprobs", 0) < 0:
        raise ValueError(f"{value}: capability 'max_top_logprobs' must be >= 0")
    return Capabilities(**chosen)


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is not None:  # a union (X | None)
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin is not None:
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", type(None): "null"}
    return names.get(hint, str(getattr(hint, "__name__", hint)))


def proxy_command(args: argparse.Namespace) -> int:
    """Run ``dynasor-client proxy`` until interrupted."""
    try:
        from ..proxy import serve_proxy
    except ImportError as exc:
        raise ValueError(
            f"the proxy needs the server extra: pip install 'dynasor-client[proxy]' ({exc})"
        ) from exc
    config = build_config(args)
    serve_proxy(
        config,
        host=args.host,
        port=args.port or None,
        log_level="info" if args.access_log else "warning",
        access_log=args.access_log,
    )
    return 0
