"""What a server can do, detected once per endpoint with a few tiny requests, then cached.

Servers that speak "the OpenAI API" differ in what matters to reasoning programs: how many samples
one request may ask for, whether prompts may be token ids (exact chunked continuation), whether a chat
can be continued from a partial assistant message, whether the generated token ids come back, and
what a seed means with n > 1. Every probe asks for at most a few tokens; a probe that the server
refuses just leaves its capability off, and the endpoint falls back (saying so in the debug log).

A probe that fails for a *transient* reason (the server could not be reached, timed out, or answered
429 or 5xx) proves nothing, so such a detection is not final: :class:`Detection` says so, and the
endpoint probes again on a later use after a backoff (:class:`Reprobe`: 2 s, doubling, at most 30 s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .._exceptions import EndpointError
from .._log import get_logger
from ._retry import is_retryable
from ._types import Kind

if TYPE_CHECKING:
    from ._endpoint import Endpoint

log = get_logger("dynasor_client.endpoints")
T = TypeVar("T")

TokenIdSource = Literal["logprobs", "return_token_ids"]
TemplateSource = Literal["apply-template", "tokenize-messages"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Server capabilities. The defaults are what any OpenAI-compatible server is assumed to do.

    - ``max_n``: the largest ``n`` one request may ask (None: no known limit; learnt from a 400 too).
    - ``token_id_prompts``: ``/v1/completions`` accepts a list of token ids as the prompt.
    - ``generated_token_ids``: where generated ids come from (llama.cpp puts them in logprobs; vLLM
      returns them with ``return_token_ids``); needed, with ``tokenize``, for token-exact continuation.
    - ``tokenize``: the server has a ``/tokenize`` endpoint (llama.cpp and vLLM do).
    - ``chat_template``: how to render chat messages to a completions prompt on the server.
    - ``assistant_prefill``: a trailing assistant message is continued rather than answered;
      ``prefill_echoes``: the returned content repeats the prefill (llama.cpp does).
    - ``max_top_logprobs``: the most ``top_logprobs`` accepted (requests are clamped to it).
    - ``streaming_usage``: ``stream_options.include_usage`` is honoured.
    - ``seeded_n_distinct``: with a seed and n > 1 the choices differ (llama.cpp repeats one sample,
      so the endpoint then sends n requests with seeds seed, seed+1, ...).
    """

    max_n: int | None = None
    token_id_prompts: bool = False
    generated_token_ids: TokenIdSource | None = None
    tokenize: bool = False
    chat_template: TemplateSource | None = None
    assistant_prefill: bool = False
    prefill_echoes: bool = False
    max_top_logprobs: int = 20
    streaming_usage: bool = True
    seeded_n_distinct: bool = True
    completions: bool = True
    chat: bool = True

    @property
    def token_exact_continuation(self) -> bool:
        return self.token_id_prompts and self.generated_token_ids is not None and self.tokenize

    def replace(self, **changes: Any) -> Capabilities:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Detection:
    """What one round of probing found.

    ``answered``: some generation route answered; ``error``: the first probe failure that proves
    nothing (server unreachable, timeout, 429, 5xx), None when the result is final.
    """

    capabilities: Capabilities
    answered: bool
    error: EndpointError | None = None


class Reprobe:
    """When to probe again after a detection that was not final: ``first_s`` after the first such
    failure, doubling with each further one, at most ``max_s`` apart."""

    def __init__(self, *, first_s: float = 2.0, max_s: float = 30.0) -> None:
        if first_s < 0 or max_s < first_s:
            raise ValueError("reprobe backoff must satisfy 0 <= first_s <= max_s")
        self.first_s, self.max_s = first_s, max_s
        self.failures = 0
        self.next_at = float("-inf")
        self.error: EndpointError | None = None
        self.provisional: Capabilities | None = None  # what was learnt meanwhile (None: nothing)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def wait_s(self, now: float) -> float:
        return max(self.next_at - now, 0.0)

    def failed(self, now: float, detection: Detection) -> float:
        """Record a failed detection; the seconds until the next probe."""
        delay = min(self.first_s * 2.0**self.failures, self.max_s)
        self.failures += 1
        self.next_at = now + delay
        self.error = detection.error
        self.provisional = detection.capabilities if detection.answered else None
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_at, self.error, self.provisional = 0, float("-inf"), None, None


class _Probes:
    """Runs probes, keeping the first failure that proves nothing about the server."""

    def __init__(self) -> None:
        self.transient: EndpointError | None = None
        self._route = False  # transient came from a generation route

    def failed(self, what: str, exc: EndpointError) -> None:
        log.debug("capability probe %r failed: %s", what, exc)
        # The generation routes' own error says most about the server; any other will do.
        if is_retryable(exc) and (self.transient is None or what in ("completions", "chat")):
            self.transient = exc if self.transient is None or not self._route else self.transient
            self._route = self._route or what in ("completions", "chat")

    async def ok(self, what: str, probe: Any) -> Any:
        try:
            return await probe
        except EndpointError as exc:
            self.failed(what, exc)
            return None


_ONE_TOKEN = {"max_tokens": 1, "temperature": 0.0}
_HI = [{"role": "user", "content": "Hi"}]


async def detect(endpoint: Endpoint) -> Capabilities:
    """Probe ``endpoint`` with tiny requests; each capability that cannot be shown stays off.

    Raises the first probe's error when nothing answered because the server could not be reached
    (or timed out, or answered 5xx/429); :func:`probe` tells a final result from a provisional one.
    """
    detection = await probe(endpoint)
    if detection.error is not None and not detection.answered:
        raise detection.error
    return detection.capabilities


async def probe(endpoint: Endpoint) -> Detection:
    """Probe ``endpoint`` once: two rounds of concurrent probes, what the server has at all, then
    what those answers make worth asking."""
    probes = _Probes()
    _ok = probes.ok
    completions, chat, props, ids, rendered = await asyncio.gather(
        _ok("completions", endpoint.raw_generate("completions", {"prompt": "Hi", **_ONE_TOKEN})),
        _ok("chat", endpoint.raw_generate("chat", {"messages": _HI, **_ONE_TOKEN})),
        _ok("props", endpoint.root_request("GET", "/props")),
        _ok("tokenize", endpoint.tokenize("Hello world")),
        _ok("apply-template", endpoint.root_request("POST", "/apply-template", {"messages": _HI})),
    )
    max_n = None
    if isinstance(props, dict) and isinstance(props.get("total_slots"), int):
        max_n = props["total_slots"]  # llama.cpp: n must not exceed its parallel slots
    has_completions, has_chat = completions is not None, chat is not None
    if not has_completions and not has_chat:
        defaults = Capabilities(max_n=max_n, tokenize=ids is not None)
        if probes.transient is not None:
            return Detection(defaults, answered=False, error=probes.transient)
        # Neither route answered a plain "Hi" (a server that only knows certain prompts, such as the
        # replay engine, or a broken one): nothing can be learnt, so assume the defaults.
        log.warning(
            "%s: capability probes got no answer; assuming defaults (pass capabilities= to choose)",
            endpoint.name,
        )
        return Detection(defaults, answered=False)

    async with asyncio.TaskGroup() as tg:
        token_prompts = tg.create_task(
            _token_prompts(probes, endpoint, ids) if has_completions else _const(False)
        )
        generated_ids = tg.create_task(_generated_ids(probes, endpoint) if has_completions else _const(None))
        template = tg.create_task(_template(probes, endpoint, rendered, ids is not None))
        prefill = tg.create_task(_prefill(probes, endpoint) if has_chat else _const((False, False)))
        max_top = tg.create_task(_top_logprobs_limit(probes, endpoint, chat_only=not has_completions))
        streaming_usage = tg.create_task(
            _streaming_usage(probes, endpoint) if has_completions else _const(False)
        )
        try_seed = has_completions and (max_n is None or max_n >= 2)
        distinct = tg.create_task(_seeded_n_distinct(probes, endpoint) if try_seed else _const(True))
    caps = Capabilities(
        max_n=max_n,
        token_id_prompts=token_prompts.result(),
        generated_token_ids=generated_ids.result(),
        tokenize=ids is not None,
        chat_template=template.result(),
        assistant_prefill=prefill.result()[0],
        prefill_echoes=prefill.result()[1],
        max_top_logprobs=max_top.result(),
        streaming_usage=streaming_usage.result(),
        seeded_n_distinct=distinct.result(),
        completions=has_completions,
        chat=has_chat,
    )
    log.debug("detected capabilities of %s: %s", endpoint.name, caps)
    return Detection(caps, answered=True, error=probes.transient)


async def _const(value: T) -> T:
    return value


async def _token_prompts(probes: _Probes, endpoint: Endpoint, ids: list[int] | None) -> bool:
    body = {"prompt": ids or [1, 2, 3], **_ONE_TOKEN}
    return await probes.ok("token prompts", endpoint.raw_generate("completions", body)) is not None


async def _generated_ids(probes: _Probes, endpoint: Endpoint) -> TokenIdSource | None:
    body = {"prompt": "Hi", "logprobs": 1, "max_tokens": 2}
    with_logprobs = await probes.ok("logprob ids", endpoint.raw_generate("completions", body))
    if _first_choice(with_logprobs, "logprobs", "content", 0, "id") is not None:
        return "logprobs"
    body = {"prompt": "Hi", "return_token_ids": True, **_ONE_TOKEN}
    with_ids = await probes.ok("return_token_ids", endpoint.raw_generate("completions", body))
    return "return_token_ids" if _first_choice(with_ids, "token_ids") is not None else None


async def _template(
    probes: _Probes, endpoint: Endpoint, rendered: Any, can_tokenize: bool
) -> TemplateSource | None:
    if isinstance(rendered, dict) and isinstance(rendered.get("prompt"), str):
        return "apply-template"
    if not can_tokenize:
        return None
    body = {"model": await endpoint.model_name(), "messages": _HI}
    tokenized = await probes.ok("tokenize messages", endpoint.root_request("POST", "/tokenize", body))
    return "tokenize-messages" if isinstance(tokenized, dict) and tokenized.get("tokens") else None


async def _prefill(probes: _Probes, endpoint: Endpoint) -> tuple[bool, bool]:
    """(continues a trailing assistant message, repeats it in the reply)."""
    prefix = "The capital of France is"
    body = {
        "messages": [
            {"role": "user", "content": "Complete the sentence."},
            {"role": "assistant", "content": prefix},
        ],
        # vLLM needs both flags; llama.cpp continues a trailing assistant message anyway. A server
        # that refuses the flags (hosted APIs answer 400) cannot be trusted to continue.
        "continue_final_message": True,
        "add_generation_prompt": False,
        "max_tokens": 2,
        "temperature": 0.0,
    }
    content = _first_choice(
        await probes.ok("assistant prefill", endpoint.raw_generate("chat", body)), "message", "content"
    )
    if not isinstance(content, str):
        return False, False
    return True, content.startswith(prefix)


async def _streaming_usage(probes: _Probes, endpoint: Endpoint) -> bool:
    body = {"prompt": "Hi", "stream_options": {"include_usage": True}, **_ONE_TOKEN}
    chunks = await probes.ok("streaming usage", endpoint.raw_generate("completions", body, stream=True))
    return bool(chunks) and any(c.get("usage") for c in chunks)


async def _seeded_n_distinct(probes: _Probes, endpoint: Endpoint) -> bool:
    body = {"prompt": "Write one random word:", "n": 2, "seed": 1234, "temperature": 1.0, "max_tokens": 8}
    sampled = await probes.ok("seeded n>1", endpoint.raw_generate("completions", body))
    if not sampled or len(sampled[0].get("choices") or []) != 2:
        return True
    first, second = (c.get("text") for c in sampled[0]["choices"])
    return bool(first != second)


async def _top_logprobs_limit(probes: _Probes, endpoint: Endpoint, *, chat_only: bool) -> int:
    """20 (OpenAI's documented maximum) unless the server refuses it and names its own limit."""
    kind: Kind = "chat" if chat_only else "completions"
    body: dict[str, Any] = {"max_tokens": 1}
    if chat_only:
        body |= {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 20}
    else:
        body |= {"prompt": "Hi", "logprobs": 20}
    try:
        await endpoint.raw_generate(kind, body)
        return 20
    except EndpointError as exc:
        if is_retryable(exc):
            probes.failed("top_logprobs", exc)
            return 20
        if "logprob" not in str(exc).lower():
            return 20  # refused for another reason: nothing learnt about the limit
        numbers = [int(x) for x in re.findall(r"\b(\d{1,2})\b", str(exc)) if 0 < int(x) < 20]
        limit = max(numbers) if numbers else 5
        log.debug("top_logprobs=20 refused (%s); using %d", exc, limit)
        return limit


def _first_choice(bodies: list[dict[str, Any]] | None, *path: Any) -> Any:
    if not bodies:
        return None
    node: Any = (bodies[0].get("choices") or [None])[0]
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and len(node) > key:
            node = node[key]
        else:
            return None
    return node
