"""The proxy's configuration (what ``dynasor-client proxy`` builds from its flags)."""

from __future__ import annotations

import base64
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

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http(s) URL including /v1, got {self.upstream!r}")
        if self.upstream_auth not in ("own", "forward"):
            raise ValueError("upstream_auth must be 'own' or 'forward'")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        object.__setattr__(self, "upstream", self.upstream.rstrip("/"))

    @property
    def upstream_display(self) -> str:
        """``upstream`` as clients, logs and the start-up line show it: credentials masked
        (``http://***@host/v1``)."""
        return mask_credentials(self.upstream)

    def secrets(self) -> list[str]:
        """What no client may see: the upstream key and the upstream URL's credentials (as written,
        decoded and as the HTTP Basic header carries them). Client keys are the key store's."""
        found = [s for s in (self.upstream_api_key,) if s]
        parts = urlsplit(self.upstream)
        userinfo = parts.netloc.rpartition("@")[0]
        if userinfo:
            user, _, password = userinfo.partition(":")
            plain = f"{unquote(user)}:{unquote(password)}"
            found += [userinfo, plain, base64.b64encode(plain.encode("utf-8")).decode("ascii")]
            found += [p for p in (password, unquote(password)) if p]
        return found


def mask_credentials(url: str) -> str:
    """``url`` with its user and password (if any) shown as ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
