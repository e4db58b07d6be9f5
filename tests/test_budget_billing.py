"""Budgets that hold (reserve before generating, settle after) and billing of work that does not
complete (issue 17, parts 2 and 3), over real HTTP on 127.0.0.1: the replay engine and the
fault-injection server.

The documented bound (docs/proxy.md, "Budgets and billing"): a budget is overshot by no more than
the prompt estimates' error of the requests in flight (plus, for chunked decoding, one chunk). The
replay engine counts prompt tokens about as the estimate does, so the tests allow ``SLACK`` tokens
per request in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from dynasor_client import BudgetExhausted, Capabilities, Endpoint, EndpointError, RetryPolicy
from dynasor_client.algorithms import PoolingRewardModel, dynasor_cot, mcts, rebase, self_consistency
from dynasor_client.budget import DEFAULT_RESERVATION, BudgetManager
from dynasor_client.endpoints import SamplingParams, Usage, estimate_tokens, prompt_estimate
from dynasor_client.program import (
    ProgramContext,
    ProgramResult,
    StopReason,
    TokenKind,
    as_program,
    fit_request,
)
from dynasor_client.proxy import KeyStore, ProxyConfig, ProxyServer
from dynasor_client.replay import ReplayServer
from dynasor_client.runtime import Runtime
from dynasor_client.traces import TraceQuestion
from tests.support.faulty_server import MODEL_ID, FaultyServer
from tests.support.replay import traces_or_skip

SLACK = 32  # tokens of prompt-estimate error allowed per request in flight


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip("svamp-codex-sc30.jsonl")[:40]


@pytest.fixture
async def replay(svamp: list[TraceQuestion]) -> AsyncIterator[ReplayServer]:
    async with ReplayServer(svamp, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=3) as server:
        yield server


def _messages(question: TraceQuestion) -> list[dict[str, str]]:
    return [{"role": "user", "content": question.question}]


# ---------------------------------------------------------------------------- the arithmetic


def test_fit_request_shrinks_max_tokens_then_n_then_refuses() -> None:
    assert fit_request(1000, None, 4, 100, 50, True) == (4, 100, 450)  # fits as asked
    assert fit_request(250, None, 4, 100, 50, True) == (4, 50, 250)  # max_tokens shrunk
    assert fit_request(80, None, 4, 100, 50, True) == (1, 30, 80)  # then n
    with pytest.raises(BudgetExhausted):
        fit_request(60, None, 4, 100, 50, True)  # not even 16 tokens of one sequence
    assert fit_request(250, 900, 4, 100, 50, True) is None  # wait: reservations stand in the way
    assert fit_request(10_000, None, 2, None, 10, True) == (2, None, 10 + 2 * DEFAULT_RESERVATION)
    assert fit_request(500, None, 2, None, 10, True) == (2, 245, 500)  # no max_tokens: set to fit
    assert fit_request(100, None, 8, 100, 40, False) == (8, 100, 40)  # only the prompt counts


def test_manager_reserves_against_global_allowance_and_pool() -> None:
    class Pool:
        def __init__(self, limit: int) -> None:
            self.limit, self.spent, self.reserved = limit, 0, 0

        def room(self) -> int | None:
            return self.limit - self.spent

        def held(self) -> int:
            return self.reserved

        def hold(self, tokens: int) -> None:
            self.reserved += tokens

        def spend(self, tokens: int) -> None:
            self.spent += tokens

    manager = BudgetManager(total=1000, per_program=600)
    a, b = manager.open(), manager.open()
    pool = Pool(300)
    b.pools.append(pool)
    assert manager.fit(a, TokenKind.GENERATED, 2, 250, 50) == (2, 250, 550)
    assert manager.free(a) == 50  # its allowance: 600 - 550
    assert manager.free(b) == min(1000 - 550, 600, 300)
    shape = manager.fit(b, TokenKind.GENERATED, 4, 200, 20)
    assert shape == (4, 70, 300) and pool.reserved == 300
    assert manager.fit(b, TokenKind.GENERATED, 1, 10, 10, wait=True) is None  # wait for b's own
    manager.release(b, 300)
    assert pool.reserved == 0 and manager.reserved == 550


# ---------------------------------------------------------------------------- the runtime


async def test_many_concurrent_programs_hold_a_small_global_budget(svamp: list[TraceQuestion]) -> None:
    budget = 2000
    async with (
        ReplayServer(svamp, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=1) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
        Runtime(endpoint, token_budget=budget, window=None) as runtime,
    ):
        programs = [as_program(self_consistency, q.question, n=8, rounds="one") for q in svamp[:20]]
        results = await asyncio.gather(*(runtime.run(p) for p in programs))
    spent = runtime.budget.spent
    assert spent == sum(r.tokens.total for r in results)
    assert 0.9 * budget <= spent <= budget + SLACK  # before: 2,000 -> 6,454
    assert runtime.budget.reserved == 0


async def test_program_allowances_hold_with_n_above_one(svamp: list[TraceQuestion]) -> None:
    async with (
        ReplayServer(svamp, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=2) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
        Runtime(endpoint, program_tokens=300) as runtime,
    ):
        programs = [as_program(self_consistency, q.question, n=30, rounds="one") for q in svamp[:10]]
        results = await asyncio.gather(*(runtime.run(p) for p in programs))
    for result in results:
        assert result.tokens.total <= 300 + SLACK


# ---------------------------------------------------------------------------- the proxy


def _client(proxy: ProxyServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=60)


async def _settle(proxy: ProxyServer) -> None:
    """Wait until every run ended (their bills are final)."""
    for _ in range(10_000):
        if proxy.service.counters.running == 0:
            return
        await asyncio.sleep(0)
    raise AssertionError("runs did not end")


async def test_one_sc_request_holds_the_key_budget(replay: ReplayServer, svamp: list[TraceQuestion]) -> None:
    keys = KeyStore({"sk-small-budget-0001": 1000})
    config = ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities, keys=keys)
    async with ProxyServer(config) as proxy, _client(proxy, "sk-small-budget-0001") as client:
        answer = await client.chat.completions.create(
            model="replay+sc30", messages=_messages(svamp[3]), extra_body={"dynasor": {"detect": 30}}
        )
        await _settle(proxy)
        assert answer.usage is not None
        (account,) = keys.accounts()
        assert account.budget.spent == answer.usage.total_tokens <= 1000 + SLACK
        assert account.budget.reserved == 0


@pytest.mark.parametrize("budget", [50, 200, 1000])
async def test_dynasor_token_budget_holds(
    replay: ReplayServer, svamp: list[TraceQuestion], budget: int
) -> None:
    config = ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities)
    async with ProxyServer(config) as proxy, _client(proxy, "none") as client:
        if budget == 50:  # the prompt (~40 tokens) and 16 tokens of a sample do not fit: refused
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(
                    model="replay+sc16",
                    messages=_messages(svamp[5]),
                    extra_body={"dynasor": {"token_budget": 50}},
                )
            assert refused.value.code == "insufficient_quota"
            return
        answer = await client.chat.completions.create(
            model="replay+sc16",
            messages=_messages(svamp[5]),
            extra_body={"dynasor": {"token_budget": budget}},
        )
        assert answer.usage is not None and answer.usage.total_tokens <= budget + SLACK  # before: 1,445


async def test_concurrent_requests_hold_the_key_budget(
    replay: ReplayServer, svamp: list[TraceQuestion]
) -> None:
    """40 pass-through streams (no max_tokens: the default reservation, shrunk to fit), 10 with n=4,
    and 10 sc requests, all at once, on a key with 3,000 tokens."""
    key, budget = "sk-shared-budget-0002", 3000
    keys = KeyStore({key: budget})
    config = ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities, keys=keys)
    statuses: list[int] = []

    async def stream(i: int, n: int) -> None:
        body: dict[str, Any] = {
            "model": "replay",
            "messages": _messages(svamp[i % 40]),
            "stream": True,
            "n": n,
        }
        async with (
            httpx.AsyncClient(timeout=60) as http,
            http.stream(
                "POST",
                f"{proxy.base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as response,
        ):
            await response.aread()
            statuses.append(response.status_code)

    async def sc(i: int) -> None:
        try:
            await client.chat.completions.create(model="replay+sc8", messages=_messages(svamp[i]))
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)

    async with ProxyServer(config) as proxy, _client(proxy, key) as client:
        await asyncio.gather(
            *(stream(i, 1) for i in range(40)),
            *(stream(i, 4) for i in range(10)),
            *(sc(i) for i in range(10)),
        )
        await _settle(proxy)
        (account,) = keys.accounts()
        in_flight = config.max_in_flight
        assert account.budget.spent <= budget + SLACK * in_flight  # before: x6.5 (40 streams), x29.6 (20 sc)
        assert account.budget.spent >= 0.8 * budget and account.budget.reserved == 0
        print(f"key budget {budget}: spent {account.budget.spent}, statuses {sorted(statuses)}")
        assert set(statuses) == {200, 429}  # what no longer fits is refused with 429


async def test_passthrough_n_is_capped(replay: ReplayServer, svamp: list[TraceQuestion]) -> None:
    key = "sk-capped-n-0003"
    keys = KeyStore({key: 200})
    config = ProxyConfig(upstream=replay.base_url, capabilities=replay.capabilities, keys=keys)
    async with ProxyServer(config) as proxy, _client(proxy, key) as client:
        answer = await client.chat.completions.create(
            model="replay", messages=_messages(svamp[0]), n=16, max_tokens=200
        )
        await _settle(proxy)
        assert answer.usage is not None and answer.usage.total_tokens <= 200 + SLACK  # before: n=64 -> x5.7
        # ~160 tokens after the prompt: max_tokens first (not under 16 each), then n.
        assert len(answer.choices) < 16 and all(c.finish_reason == "length" for c in answer.choices)
        (account,) = keys.accounts()
        assert account.budget.spent == answer.usage.total_tokens
        with pytest.raises(openai.RateLimitError) as refused:  # nothing useful is left
            await client.chat.completions.create(model="replay", messages=_messages(svamp[0]), max_tokens=50)
        assert refused.value.code == "insufficient_quota"


# ---------------------------------------------------------------------------- billing what streamed

MESSAGES = [{"role": "user", "content": "what is forty two"}]
PROMPT_ESTIMATE = prompt_estimate(None, MESSAGES)  # 17 characters: 5 tokens, plus 4 for the message
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.1, jitter_s=0.0, max_total_s=10)


@pytest.fixture(scope="module")
def faulty_module() -> Iterator[FaultyServer]:
    with FaultyServer() as server:
        yield server


@pytest.fixture
def faulty(faulty_module: FaultyServer) -> FaultyServer:
    faulty_module.reset()  # each test's faults fire afresh
    return faulty_module


def _faulty_endpoint(server: FaultyServer, scenario: str, retry: RetryPolicy = FAST) -> Endpoint:
    return Endpoint(
        server.base_url(scenario), model=MODEL_ID, retry=retry, capabilities=Capabilities(), timeout=5.0
    )


async def _until(check: Any, what: str) -> None:
    for _ in range(2000):  # polled, up to ~20 s: the check, not the clock, decides
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: did not happen")


async def _generate_once(context: ProgramContext) -> ProgramResult:
    generation = await context.generate(messages=MESSAGES)
    return context.result(generation.choices[0].text, None)


async def test_a_stream_dropped_mid_way_is_billed_what_it_streamed(faulty: FaultyServer) -> None:
    # The first attempt streams 20 of its 40 tokens and is cut; the retry completes.
    async with (
        _faulty_endpoint(faulty, "cut-20-1") as endpoint,
        Runtime(endpoint, token_budget=100_000) as runtime,
    ):
        result = await runtime.run(_generate_once)
    completed = result.tokens.total - (PROMPT_ESTIMATE + 20)
    assert completed == 4 + 40  # the retry's usage: 4 prompt words, 40 tokens
    assert runtime.budget.spent == result.tokens.total  # before: the cut attempt was free

    # Without a retry the request fails: still billed its prompt and the 20 tokens it streamed.
    async with (
        _faulty_endpoint(faulty, "cut-20-5", RetryPolicy(max_attempts=1)) as endpoint,
        Runtime(endpoint, token_budget=100_000) as runtime,
    ):
        handle = runtime.submit(_generate_once)
        with pytest.raises(EndpointError):
            await handle
    assert runtime.budget.spent == PROMPT_ESTIMATE + 20  # before: 0


async def test_a_program_cut_by_its_deadline_is_billed_what_its_requests_streamed(
    faulty: FaultyServer,
) -> None:
    # The upstream streams 10 tokens, then stalls: the deadline aborts the request.
    async with (
        _faulty_endpoint(faulty, "stall-10") as endpoint,
        Runtime(endpoint, token_budget=100_000) as runtime,
    ):
        result = await runtime.run(_generate_once, deadline_s=1.0)
    assert result.stop_reason is StopReason.DEADLINE and result.partial
    assert result.tokens.total == runtime.budget.spent == PROMPT_ESTIMATE + 10  # before: 0
    assert await asyncio.to_thread(faulty.wait_ended, "stall-10", 10.0)  # and the upstream was aborted


async def test_an_abandoned_passthrough_stream_bills_prompt_and_streamed(faulty: FaultyServer) -> None:
    key = "sk-abandons-streams-0004"
    keys = KeyStore({key: 100_000})
    config = ProxyConfig(upstream=faulty.root_url + "/stall-12/v1", capabilities=Capabilities(), keys=keys)
    body = {"model": MODEL_ID, "messages": MESSAGES, "stream": True}
    async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=10) as http:
        async with http.stream(
            "POST",
            f"{proxy.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data:")
                if seen == 12:
                    break  # the client leaves mid-stream
        await _until(lambda: proxy.service.counters.running == 0, "the run ended")
        (account,) = keys.accounts()
        assert account.budget.spent == PROMPT_ESTIMATE + 12  # before: 12 (the prompt was never billed)
        assert account.budget.reserved == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_an_upstream_without_usage_is_billed_an_estimate(faulty: FaultyServer, stream: bool) -> None:
    key = "sk-no-usage-upstream-0005"
    keys = KeyStore({key: None})
    config = ProxyConfig(upstream=faulty.root_url + "/no-usage/v1", capabilities=Capabilities(), keys=keys)
    async with ProxyServer(config) as proxy, _client(proxy, key) as client:
        if stream:
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model=MODEL_ID, messages=MESSAGES, stream=True
                )
            ]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            generated = sum(  # each content event: its characters / 4, at least 1
                max(1, estimate_tokens(c.choices[0].delta.content))
                for c in chunks
                if c.choices and c.choices[0].delta.content
            )
        else:
            answer = await client.chat.completions.create(model=MODEL_ID, messages=MESSAGES)
            assert answer.usage is None
            text = answer.choices[0].message.content or ""
            generated = estimate_tokens(text)
        await _until(lambda: proxy.service.counters.running == 0, "the run ended")
        (account,) = keys.accounts()
        assert text and account.budget.spent == PROMPT_ESTIMATE + generated > 0  # before: 0


async def test_sc_after_a_mid_stream_drop_bills_the_dropped_attempt(faulty: FaultyServer) -> None:
    key = "sk-sc-after-drop-0006"
    keys = KeyStore({key: None})
    config = ProxyConfig(upstream=faulty.root_url + "/cut-20-1/v1", capabilities=Capabilities(), keys=keys)
    async with ProxyServer(config, retry=FAST) as proxy, _client(proxy, key) as client:
        answer = await client.chat.completions.create(model=f"{MODEL_ID}+sc4", messages=MESSAGES)
        await _until(lambda: proxy.service.counters.running == 0, "the run ended")
        (account,) = keys.accounts()
        assert answer.usage is not None and account.budget.spent == answer.usage.total_tokens
        # 4 samples of 40 tokens, plus the 20 the cut attempt streamed (before: 0 for it)
        assert answer.usage.completion_tokens == 4 * 40 + 20


# ---------------------------------------------------------------------------- chunked requests


@pytest.fixture(scope="module")
def gsm8k() -> list[TraceQuestion]:
    return traces_or_skip("gsm8k-qwen25coder05b-sc8-logprobs.jsonl")[:8]


@pytest.fixture(scope="module")
def math_questions() -> list[TraceQuestion]:
    return traces_or_skip("math-qwen25math-sc8.jsonl")[:8]


def _chunked(name: str, question: TraceQuestion, endpoint: Endpoint) -> Any:
    if name == "cot":
        return as_program(dynasor_cot, question.question, chunk_tokens=64, window=3)
    reward = PoolingRewardModel(endpoint)
    if name == "rebase":
        return as_program(
            rebase, question.question, reward_model=reward, width=4, max_depth=4, step_tokens=64
        )
    return as_program(mcts, question.question, reward_model=reward, iterations=6, max_depth=4, step_tokens=64)


@pytest.mark.parametrize("name", ["cot", "rebase", "mcts"])
async def test_chunked_techniques_hold_a_small_budget(
    name: str, gsm8k: list[TraceQuestion], math_questions: list[TraceQuestion]
) -> None:
    """8 programs at once whose chunks, probes, steps and reward calls each reserve and are shrunk
    (before: each overshot by up to a chunk and a reward call: +1,243 cot, +2,431 rebase, +1,538
    mcts on this budget of 1,200)."""
    questions = gsm8k if name == "cot" else math_questions
    budget = 1200
    async with (
        ReplayServer(questions, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=0) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
        Runtime(endpoint, token_budget=budget) as runtime,
    ):
        results = await asyncio.gather(*(runtime.run(_chunked(name, q, endpoint)) for q in questions))
    spent = runtime.budget.spent
    print(f"{name}: 8 programs at once, budget {budget}: spent {spent}")
    assert spent == sum(r.tokens.total for r in results)
    assert 0.8 * budget <= spent <= budget + SLACK, spent
    assert runtime.budget.reserved == 0
    assert any(r.stop_reason is StopReason.BUDGET for r in results)  # the budget, not the programs, ended it


async def test_a_chunk_is_shrunk_to_what_is_left_then_refused(faulty: FaultyServer) -> None:
    """A request sent through a request slot with its ``max_tokens``: shrunk to the budget's rest,
    then refused when not even 16 tokens fit (the program answers with what it has)."""

    async def chunks(context: ProgramContext) -> ProgramResult:
        while True:
            async with context.request_slot(max_tokens=64, prompt_tokens=PROMPT_ESTIMATE) as most:
                generation = await context.endpoint.chat(MESSAGES, params=SamplingParams(max_tokens=most))
            context.charge(TokenKind.GENERATED, generation.usage, estimate=PROMPT_ESTIMATE)
            context.report(1.0, 1, "42")

    async with _faulty_endpoint(faulty, "ok") as endpoint, Runtime(endpoint, token_budget=50) as runtime:
        result = await runtime.run(chunks)
    sent = [r.json["max_tokens"] for r in faulty.requests("ok") if r.json and "max_tokens" in r.json]
    # Each answer costs 8 tokens (4 prompt words, 4 generated): 50 - 9 (prompt), then 8 less each.
    assert sent == [41, 33, 25, 17]
    assert result.stop_reason is StopReason.BUDGET and result.partial and result.answer == "42"
    assert runtime.budget.spent == 4 * 8 <= 50 and runtime.budget.reserved == 0


async def test_a_reward_request_is_reserved_whole_or_refused(faulty: FaultyServer) -> None:
    async def judged(context: ProgramContext) -> ProgramResult:
        async with context.request_slot(max_tokens=40, kind=TokenKind.REWARD, shrink=False) as most:
            assert most == 40
        context.charge(TokenKind.REWARD, Usage(0, 30))  # what it cost: 30 of the 60 are left
        async with context.request_slot(max_tokens=40, kind=TokenKind.REWARD, shrink=False):
            raise AssertionError("a reward request that does not fit whole is refused")

    async with _faulty_endpoint(faulty, "ok") as endpoint, Runtime(endpoint, token_budget=60) as runtime:
        context_budget = runtime.budget
        result = await runtime.run(judged, token_cap=None)
    assert result.stop_reason is StopReason.BUDGET and context_budget.reserved == 0


@pytest.mark.parametrize("kind", [TokenKind.PROBE, TokenKind.REWARD, TokenKind.GENERATED])
async def test_an_aborted_chunked_request_is_billed_as_its_kind(
    faulty: FaultyServer, kind: TokenKind
) -> None:
    """A probe (or reward call, or chunk) cut by its program's deadline: billed its prompt's estimate
    and the 10 tokens it streamed, as its own kind (before: every aborted one as generated)."""

    async def one(context: ProgramContext) -> ProgramResult:
        async with context.request_slot(max_tokens=64, prompt_tokens=PROMPT_ESTIMATE, kind=kind):
            await context.endpoint.chat(MESSAGES, params=SamplingParams(max_tokens=64))
        raise AssertionError("the upstream stalls: the deadline ends the request")

    async with (
        _faulty_endpoint(faulty, "stall-10") as endpoint,
        Runtime(endpoint, token_budget=100_000) as runtime,
    ):
        result = await runtime.run(one, deadline_s=1.0)
    tokens = result.tokens
    assert result.stop_reason is StopReason.DEADLINE
    assert tokens.total == runtime.budget.spent == PROMPT_ESTIMATE + 10
    if kind is TokenKind.REWARD:  # a reward model's tokens are all reward tokens
        assert (tokens.prompt, tokens.reward, tokens.generated) == (0, PROMPT_ESTIMATE + 10, 0)
    else:
        assert tokens.prompt == PROMPT_ESTIMATE and getattr(tokens, kind.value) == 10
        assert tokens.generated + tokens.probe == 10


LOGPROBS = SamplingParams(logprobs=True)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_library_upstream_without_usage_bills_the_prompt_estimate(
    faulty: FaultyServer, stream: bool
) -> None:
    async with (
        _faulty_endpoint(faulty, "no-usage") as endpoint,
        Runtime(endpoint, token_budget=100_000) as runtime,
    ):
        # The answer's tokens are counted from its logprobs; its prompt has no count but the estimate.
        generation = await endpoint.chat(MESSAGES, stream=stream, params=LOGPROBS)
        assert generation.usage.prompt_tokens == PROMPT_ESTIMATE  # before: 0
        assert generation.usage.completion_tokens == 4

        async def generate_once(context: ProgramContext) -> ProgramResult:
            answer = await context.generate(messages=MESSAGES, params=LOGPROBS)
            return context.result(answer.choices[0].text, None)

        result = await runtime.run(generate_once)
    assert result.tokens.prompt == PROMPT_ESTIMATE and runtime.budget.spent == PROMPT_ESTIMATE + 4


@pytest.mark.parametrize(
    ("model", "budget"), [("replay+cot-low", 200), ("replay+cot-low", 300), ("replay+cot", 1000)]
)
async def test_proxy_cot_token_budget_holds(gsm8k: list[TraceQuestion], model: str, budget: int) -> None:
    """``dynasor.token_budget`` on Dynasor-CoT through the proxy: its chunks and probes reserve, and
    the budget counts what the client is billed (cached prompt tokens included). Before: 529,
    1,479 and 3,818 tokens billed at most."""
    async with ReplayServer(gsm8k, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=0) as server:
        config = ProxyConfig(upstream=server.base_url, capabilities=server.capabilities)
        async with ProxyServer(config) as proxy, _client(proxy, "none") as client:
            spent = []
            for question in gsm8k:
                answer = await client.chat.completions.create(
                    model=model,
                    messages=_messages(question),
                    extra_body={"dynasor": {"token_budget": budget}},
                )
                assert answer.usage is not None
                spent.append(answer.usage.total_tokens)
    print(f"{model} token_budget {budget}: at most {max(spent)} billed ({spent})")
    assert max(spent) <= budget + SLACK, spent
