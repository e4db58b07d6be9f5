"""What the real-server online benchmark reads from the server itself, over plain HTTP: engine timings
to fit a :class:`~dynasor_client.replay.GPUProfile` to (``fit_profile``'s recipe: inter-token gaps of
``N`` concurrent streams at two prompt lengths, time to first token of lone prompts) and the
server's own generated-token counter (Prometheus ``/metrics`` of llama.cpp, vLLM or SGLang)."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..replay import TimingSample

__all__ = ["ServerCounters", "fresh_connections", "probe_timings", "root_url"]

# Counters of generated tokens and gauges of running requests, by server.
_GENERATED = (
    "llamacpp:tokens_predicted_total",
    "vllm:generation_tokens_total",
    "sglang:generation_tokens_total",
)
_PREFILLED = ("llamacpp:prompt_tokens_total",)  # prompt tokens computed (a cached prefix is not)
_RUNNING = ("llamacpp:requests_processing", "vllm:num_requests_running", "sglang:num_running_reqs")
_FILLER = "the quick brown fox jumps over the lazy dog while counting numbers "  # ~14 tokens
_DECODE_TOKENS = 32  # tokens per stream in a decode probe: its middle gaps are the iterations
_SKIP_GAPS = 6  # gaps left out at each end (streams join and leave at slightly different times)


def fresh_connections(timeout_s: float) -> httpx.AsyncClient:
    """A client opening a connection per request: llama.cpp's HTTP server (cpp-httplib) closes a
    kept-alive connection after a few requests, and a request sent on it as it closes is lost."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s), trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    )


def root_url(base_url: str) -> str:
    """The server root of an OpenAI-compatible base URL (``.../v1`` removed): where ``/metrics`` is."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _prometheus(text: str, names: Sequence[str]) -> float | None:
    """The sum over label sets of the first of ``names`` the text holds, None if it holds none."""
    for name in names:
        values = [
            float(line.rsplit(None, 1)[-1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        ]
        if values:
            return sum(values)
    return None


@dataclass
class ServerCounters:
    """The server's own ``/metrics``: generated tokens so far (None where the server exposes none)."""

    client: httpx.AsyncClient
    root: str

    async def _text(self) -> str | None:
        try:
            response = await self.client.get(f"{self.root}/metrics")
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    async def generated(self) -> int | None:
        text = await self._text()
        value = None if text is None else _prometheus(text, _GENERATED)
        return None if value is None else round(value)

    async def settled(self, timeout_s: float = 30.0) -> tuple[int | None, int | None]:
        """Generated tokens and prefilled prompt tokens (llama.cpp only) once no request runs (aborted
        ones finish their last step first): polls the server's running gauge, where it has one, until
        it reads 0."""
        async with asyncio.timeout(timeout_s):
            while True:
                text = await self._text()
                running = None if text is None else _prometheus(text, _RUNNING)
                if not running:
                    counts = [
                        None if text is None else _prometheus(text, n) for n in (_GENERATED, _PREFILLED)
                    ]
                    generated, prefilled = (None if v is None else round(v) for v in counts)
                    return generated, prefilled
                await asyncio.sleep(0.2)  # polling the server's own state, not a guess at a duration


async def _stream(
    client: httpx.AsyncClient, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
) -> tuple[float, list[float], int | None]:
    """One streamed chat request: (time to first token, arrival times of content chunks, prompt tokens)."""
    started = time.perf_counter()
    stamps: list[float] = []
    prompt_tokens = None
    async with client.stream("POST", url, json=dict(body), headers=dict(headers)) as response:
        if response.status_code != 200:
            await response.aread()
            raise ValueError(f"timing probe: {url} answered {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                prompt_tokens = usage["prompt_tokens"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):
                    stamps.append(time.perf_counter())
    ttft = (stamps[0] - started) if stamps else math.nan
    return ttft, stamps, prompt_tokens


def _prompt(words: int) -> str:
    """A prompt no cache holds (a fresh nonce first) of about ``words`` filler tokens."""
    filler = (_FILLER * (1 + words // 14))[: words * 5]
    return f"[{secrets.token_hex(6)}] {filler}\nNow write the numbers from 1 to 500, separated by commas."


async def probe_timings(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    batches: Sequence[int] = (1, 2, 4, 8),
    contexts: Sequence[int] = (30, 150),
    prefills: Sequence[int] = (64, 256),
) -> list[TimingSample]:
    """Timing samples of the server at ``base_url``: for each batch size ``N`` and prompt length
    ``L`` (tokens, about), the median inter-token gap of ``N`` concurrent streams (``running = N``,
    ``kv_tokens = N * (L + tokens so far)``); and for each prompt length ``P``, the time to first
    token of a lone request (``running = 1``, ``kv_tokens = prefill_tokens = P``). Greedy, with
    ``ignore_eos`` (llama.cpp, vLLM, SGLang), so every stream runs its full length; idle server
    assumed. Raises ValueError when the server refuses or gives too few tokens to time."""
    url = f"{base_url.rstrip('/')}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def body(words: int, max_tokens: int) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "user", "content": _prompt(words)}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }

    samples: list[TimingSample] = []
    async with fresh_connections(300.0) as client:
        await _stream(client, url, body(10, 4), headers)  # warm-up (loads, allocates), not timed
        for words in contexts:
            for n in batches:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(_stream(client, url, body(words, _DECODE_TOKENS), headers))
                        for _ in range(n)
                    ]
                runs = [t.result() for t in tasks]
                gaps = [
                    b - a
                    for _, stamps, _ in runs
                    for a, b in zip(
                        stamps[_SKIP_GAPS:-_SKIP_GAPS], stamps[_SKIP_GAPS + 1 : -_SKIP_GAPS], strict=False
                    )
                ]
                if not gaps:
                    raise ValueError(
                        f"timing probe: {url} streamed too few tokens to time (need {_DECODE_TOKENS})"
                    )
                counted = [p for _, _, p in runs if p]
                context = round(n * ((statistics.median(counted) if counted else words) + _DECODE_TOKENS / 2))
                samples.append(TimingSample(statistics.median(gaps), running=n, kv_tokens=context))
        for words in prefills:
            ttft, _, counted_prompt = await _stream(client, url, body(words, 2), headers)
            tokens = counted_prompt or words
            if math.isfinite(ttft) and ttft > 0:
                samples.append(TimingSample(ttft, running=1, kv_tokens=tokens, prefill_tokens=tokens))
    return samples
