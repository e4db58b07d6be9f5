"""``dynasor-client generate`` and ``capabilities``: one request to, or a probe of, any endpoint."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING

from ..endpoints import Endpoint, SamplingParams
from ._common import add_endpoint_args

if TYPE_CHECKING:
    from ._common import Subparsers

__all__ = ["add_capabilities_parser", "add_generate_parser"]


def add_generate_parser(sub: Subparsers) -> None:
    generate = sub.add_parser("generate", help="one request to any OpenAI-compatible endpoint")
    add_endpoint_args(generate)
    generate.add_argument("prompt")
    generate.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    generate.add_argument("-n", type=int, default=1)
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--seed", type=int, default=None)
    generate.set_defaults(func=lambda args: asyncio.run(_generate(args)))


def add_capabilities_parser(sub: Subparsers) -> None:
    caps = sub.add_parser("capabilities", help="probe an endpoint and print what it supports (JSON)")
    add_endpoint_args(caps)
    caps.set_defaults(func=lambda args: asyncio.run(_capabilities(args)))


async def _generate(args: argparse.Namespace) -> None:
    async with Endpoint(args.endpoint, model=args.model, api_key=args.api_key) as endpoint:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
        if args.chat:
            result = await endpoint.chat([{"role": "user", "content": args.prompt}], n=args.n, params=params)
        else:
            result = await endpoint.complete(args.prompt, n=args.n, params=params)
        for choice in result.choices:
            print(f"--- choice {choice.index} ({choice.num_tokens} tokens, {choice.finish_reason})")
            if choice.reasoning:
                print(f"[reasoning] {choice.reasoning}")
            print(choice.text)
        ttft = f", first token after {result.ttft_s:.2f}s" if result.ttft_s is not None else ""
        print(
            f"--- usage {result.usage.prompt_tokens} prompt + {result.usage.completion_tokens} "
            f"completion tokens in {result.latency_s:.2f}s{ttft}"
        )


async def _capabilities(args: argparse.Namespace) -> None:
    async with Endpoint(args.endpoint, model=args.model, api_key=args.api_key) as endpoint:
        caps = await endpoint.capabilities()
        print(json.dumps({"model": await endpoint.model_name(), **dataclasses.asdict(caps)}, indent=2))
