"""The proxy's configuration (what ``dynasor-client proxy`` builds from its flags)."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from ..endpoints import Capabilities
from ._keys import KeyStore

UpstreamAuth = Literal["own", "forward"]


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy reaches its upstream and whom it serves.

    Args:
        upstream: the upstream API root including ``/v1`` (any OpenAI-compatible server).
        model: the upstream model the dynasor programs use (default: the first ``/v1/models`` lists).
            Pass-through requests keep whatever model they name.
        upstream_api_key: the proxy's own key for the upstream (None: no key; never logged).
        upstream_auth: ``"own"`` sends ``upstream_api_key``; ``"forward"`` sends the client's own
            ``Authorization`` header upstream on pass-through requests (the proxy's key when the
            client sent none; dynasor programs always use the proxy's key).
        keys: the API keys clients must present, with their token budgets (None: no auth).
        token_budget: tokens all requests together may spend (None: unlimited); 429 once spent.
        capabilities: the upstream's capabilities, or None to probe them on the first dynasor
            request (give them for hosted APIs and the replay server).
        timeout_s: seconds to wait for an upstream connection and for each read.
        max_in_flight: upstream requests in flight at once (the runtime's window).
        reward: the reward model of best-of-N, Rebase and MCTS when a request does not choose one
            (``dynasor.reward``): ``"judge"`` (the upstream model as a yes/no judge), ``"pooling"``
            (the upstream's ``/pooling``, vLLM PRMs and the replay server) or the API root of a
            separate ``/pooling`` server.
        meter_streams: add ``stream_options.include_usage`` to pass-through streams that lack it,
            so that their tokens can be counted (the usage chunk is removed before the client sees
            it); False forwards such streams byte for byte and counts ~1 token per content event.
        extra_headers: sent upstream with every request.
        redis: ``redis://[:password@]host:port/db``: key budgets and usage live in this Redis,
            shared by every proxy replica on it (docs/distributed.md); None: in this process.
        reservation_ttl_s: with ``redis``: how long a request's reservation outlives its replica
            (a replica refreshes its reservations every third of it while it runs).

    Limits (docs/proxy.md, "Limits"; each one a flag of ``dynasor-client proxy``):

    Args:
        max_body_bytes: the largest request body accepted (413 above it, refused on its
            ``Content-Length`` before reading, or as soon as a chunked body passes it).
        max_error_body_bytes: how much of an upstream error body is read (the rest is never read;
            the connection is closed).
        max_n: the most sequences (``n``) one pass-through request may ask for (400 above it), and
            never more than ``max_in_flight``: one request cannot take the whole runtime window.
        max_tokens: the most ``max_tokens`` (or ``max_completion_tokens``) a request may ask for
            (400 above it; None: no limit). A request without one is forwarded without one. A
            technique's ``dynasor.chunk_tokens`` and ``dynasor.step_tokens`` are held to it too.
        max_samples: the most samples a dynasor technique may draw: ``dynasor.n`` (sc, best-of-N)
            and ``dynasor.width`` (rebase); 400 above it.
        stream_buffer: events queued between the upstream reader and the client writer of one
            stream; while that many are unread the proxy stops reading the upstream.
        stall_timeout_s: seconds a client may leave a stream unread before the proxy gives up:
            the upstream request is aborted and the client connection closed.
        header_timeout_s: seconds a connection has to deliver a request's headers (after connecting,
            or after its previous response); then it is closed.
        max_header_bytes: the most bytes of request line and headers (the connection is closed
            with 431 above it).
        max_connections: connections and requests at once (uvicorn's ``limit_concurrency``): a
            request beyond it gets 503 (None: no limit).
        keep_alive_s: seconds an idle keep-alive connection is kept (uvicorn's
            ``timeout_keep_alive``).
    """

    upstream: str
    model: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    upstream_auth: UpstreamAuth = "own"
    keys: KeyStore | None = None
    token_budget: int | None = None
    capabilities: Capabilities | None = None
    timeout_s: float = 600.0
    max_in_flight: int = 64
    reward: str = "judge"
    meter_streams: bool = True
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_body_bytes: int = 16 * 1024 * 1024
    max_error_body_bytes: int = 64 * 1024
    max_n: int = 16
    max_tokens: int | None = 65536
    max_samples: int = 64
    stream_buffer: int = 64
    stall_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int | None = 1024
    keep_alive_s: float = 5.0
    redis: str | None = field(default=None, repr=False)
    reservation_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http(s) URL including /v1, got {self.upstream!r}")
        if self.upstream_auth not in ("own", "forward"):
            raise ValueError("upstream_auth must be 'own' or 'forward'")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        positive = ("max_body_bytes", "max_error_body_bytes", "max_n", "max_samples", "stream_buffer")
        for name in (*positive, "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_tokens", "max_connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            shown = self.redis_display
            raise ValueError(f"redis must be a redis://, rediss:// or unix:// URL, got {shown!r}")
        for name in ("stall_timeout_s", "header_timeout_s", "keep_alive_s", "reservation_ttl_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive, finite number of seconds")
        object.__setattr__(self, "upstream", self.upstream.rstrip("/"))

    @property
    def upstream_display(self) -> str:
        """``upstream`` as clients, logs and the start-up line show it: credentials masked
        (``http://***@host/v1``)."""
        return mask_credentials(self.upstream)

    @property
    def redis_display(self) -> str | None:
        """``redis`` as logs show it (credentials masked)."""
        return None if self.redis is None else mask_credentials(self.redis)

    def secrets(self) -> list[str]:
        """What no client may see: the upstream key and the upstream and Redis URLs' credentials (as
        written, decoded and as the HTTP Basic header carries them). Client keys are the key store's."""
        found = [s for s in (self.upstream_api_key,) if s]
        for url in (self.upstream, self.redis):
            found += _url_secrets(url) if url else []
        return found


def _url_secrets(url: str) -> list[str]:
    """A URL's credentials: as written, decoded and as the HTTP Basic header carries them."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if not userinfo:
        return []
    user, _, password = userinfo.partition(":")
    plain = f"{unquote(user)}:{unquote(password)}"
    found = [userinfo, plain, base64.b64encode(plain.encode("utf-8")).decode("ascii")]
    return found + [p for p in (password, unquote(password)) if p]


def mask_credentials(url: str) -> str:
    """``url`` with its user and password (if any) shown as ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
