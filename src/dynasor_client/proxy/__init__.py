"""An OpenAI-compatible proxy that applies certaindex-driven reasoning techniques per request.

Point any OpenAI client (an application, an agent framework) at the proxy's ``base_url``; it
forwards to ``--upstream`` (vLLM, SGLang, llama.cpp, a hosted API)::

    dynasor-client proxy --upstream http://127.0.0.1:8000/v1 --port 8100 --api-keys-file keys.txt

    client = openai.OpenAI(base_url="http://127.0.0.1:8100/v1", api_key="sk-team-a")
    client.chat.completions.create(model="qwen", messages=...)                       # pass-through
    sc8 = {"dynasor": {"algorithm": "sc", "n": 8}}
    client.chat.completions.create(model="qwen", messages=..., extra_body=sc8)         # self-consistency
    client.chat.completions.create(model="qwen+cot-low", messages=..., stream=True)  # Dynasor-CoT

In Python: ``async with ProxyServer(ProxyConfig(upstream=url)) as proxy:`` (a free port;
``proxy.base_url``), or serve ``create_proxy_app(config)`` with uvicorn.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming or not), ``GET /v1/models``
(the upstream's), ``GET /health``, ``GET /dynasor/stats``.

- **Pass-through** (no dynasor option): the body goes upstream untouched, the answer comes back as
  the upstream sent it, stream events forwarded as they arrive (:mod:`._passthrough`).
- **Techniques**: the ``dynasor`` body field or a model suffix (:mod:`._options`: every option and
  the suffix grammar), each algorithm one entry of the registry (:mod:`._registry`: its coroutine,
  its pydantic options model, how a request becomes its arguments); self-consistency and best-of-N
  answer with the winning sample's full text once the vote is done, Dynasor-CoT streams its chain
  of thought as it is decoded, Rebase and MCTS answer once the tree search ends, scored by the
  reward model the request chooses (``dynasor.reward``) (:mod:`._programs`).
- **Extension fields** of responses: ``dynasor`` (answer, confidence, stop reason, samples, ...),
  ``usage.dynasor_saved_tokens``, ``usage.dynasor_tokens`` (:mod:`._responses`).
- **Errors** in OpenAI's shape, upstream ones with their status (:mod:`._errors`).
- **Keys and budgets**: client keys with per-key token budgets, 401 / 429 ``insufficient_quota``;
  the upstream key is the proxy's own or the client's (:mod:`._keys`, :class:`ProxyConfig`). The
  budgets and usage live in this process, or in Redis shared by every replica (``--redis URL``;
  :mod:`._store`, :class:`RedisStore`; needs the ``[redis]`` extra).
- **Runtime**: every request, pass-through included, runs as one program of the proxy's runtime
  (global token budget, deadlines from ``X-Dynasor-Deadline-S`` or ``dynasor.deadline_s``, one
  request window across all clients); a client that disconnects has its program cancelled and
  its upstream requests closed (:mod:`._run`).

Needs the ``[proxy]`` extra (FastAPI, uvicorn); imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

if TYPE_CHECKING:
    from ._app import create_proxy_app
    from ._config import ProxyConfig
    from ._keys import KeyStore
    from ._options import DynasorOptions, parse_options
    from ._redis import RedisStore
    from ._redis_bench import local_redis, redis_latency_table, reservation_latency
    from ._server import ProxyServer, serve_proxy

_LAZY = {
    "create_proxy_app": "._app",
    "ProxyConfig": "._config",
    "KeyStore": "._keys",
    "DynasorOptions": "._options",
    "parse_options": "._options",
    "ProxyServer": "._server",
    "serve_proxy": "._server",
    "RedisStore": "._redis",
    "local_redis": "._redis_bench",
    "redis_latency_table": "._redis_bench",
    "reservation_latency": "._redis_bench",
}


# The server parts load on first use (they need the ``[proxy]`` extra).
__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "DynasorOptions",
    "KeyStore",
    "ProxyConfig",
    "ProxyServer",
    "RedisStore",
    "create_proxy_app",
    "local_redis",
    "parse_options",
    "redis_latency_table",
    "reservation_latency",
    "serve_proxy",
]
