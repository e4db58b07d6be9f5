"""The endpoint layer against the real llama.cpp server with SmolLM2-135M-Instruct (over HTTP)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from dynasor_client import (
    Capabilities,
    Endpoint,
    LocalLlamaServer,
    SamplingParams,
    Trajectory,
    program_scope,
    start_trajectories,
)
from tests.conftest import LOCAL_PARALLEL
from tests.support.llama import IGNORE_EOS, SentBodies, busy_slots, predicted

PROMPT = "Once upon a time, in a small village by the sea,"
QUESTION = [{"role": "user", "content": "Tom has 27 apples and buys 21 more. How many apples does he have?"}]
GREEDY = SamplingParams(temperature=0.0, extra_body=IGNORE_EOS)


async def test_detects_llamacpp_capabilities(local_server: LocalLlamaServer) -> None:
    async with Endpoint(local_server.base_url) as endpoint:
        caps = await endpoint.capabilities()
        assert await endpoint.capabilities() is caps  # cached
        assert await endpoint.model_name() == local_server.model
    assert caps.max_n == LOCAL_PARALLEL
    assert caps.token_id_prompts and caps.tokenize and caps.generated_token_ids == "logprobs"
    assert caps.token_exact_continuation
    assert caps.chat_template == "apply-template"
    assert caps.assistant_prefill and caps.prefill_echoes
    assert caps.streaming_usage and caps.completions and caps.chat


async def test_completion_and_chat_are_normalised(local_endpoint: Endpoint) -> None:
    generation = await local_endpoint.complete(
        PROMPT, max_tokens=12, temperature=0.7, stream=False, extra_body=IGNORE_EOS
    )
    (choice,) = generation.choices
    assert choice.text and choice.raw_text == choice.text
    assert 1 <= choice.num_tokens <= 12
    assert choice.finish_reason in {"stop", "length"}
    assert generation.usage.prompt_tokens > 5
    assert generation.usage.completion_tokens == choice.num_tokens
    assert generation.latency_s > 0 and generation.ttft_s is None  # not streamed

    chat = await local_endpoint.chat(QUESTION, max_tokens=16, temperature=0.7, extra_body=IGNORE_EOS)
    assert chat.choices[0].text.strip()
    assert chat.usage.prompt_tokens > 20  # the chat template wraps the question


async def test_streaming_measures_time_to_first_token(local_endpoint: Endpoint) -> None:
    streamed = await local_endpoint.chat(QUESTION, max_tokens=24, params=GREEDY, stream=True)
    whole = await local_endpoint.chat(QUESTION, max_tokens=24, params=GREEDY, stream=False)
    assert streamed.ttft_s is not None and 0 < streamed.ttft_s < streamed.latency_s
    assert streamed.choices[0].text == whole.choices[0].text
    assert streamed.usage.completion_tokens == whole.usage.completion_tokens


async def test_usage_counts_every_choice_when_n_above_one(local_endpoint: Endpoint) -> None:
    # llama.cpp's own usage counts only the first choice; ours counts each choice.
    body = {"prompt": PROMPT, "n": 3, "max_tokens": 6, "temperature": 1.0, "logprobs": 1, **IGNORE_EOS}
    (raw,) = await local_endpoint.raw_generate("completions", body)
    lengths = [len(c["logprobs"]["content"]) for c in raw["choices"]]
    assert raw["usage"]["completion_tokens"] == lengths[0] < sum(lengths)

    generation = await local_endpoint.complete(
        PROMPT, n=3, max_tokens=6, temperature=1.0, extra_body=IGNORE_EOS
    )
    assert len(generation.choices) == 3
    for choice in generation.choices:
        assert choice.token_ids is not None and choice.num_tokens == len(choice.token_ids)
        assert choice.finish_reason == "length" and choice.num_tokens == 6
        assert choice.logprobs is None  # asked internally for counting, not returned
    assert generation.usage.completion_tokens == sum(c.num_tokens for c in generation.choices)


async def test_n_above_server_limit_is_split(local_endpoint: Endpoint) -> None:
    generation = await local_endpoint.complete(PROMPT, n=LOCAL_PARALLEL + 2, max_tokens=4, temperature=1.0)
    assert len(generation.choices) == LOCAL_PARALLEL + 2
    assert [c.index for c in generation.choices] == list(range(LOCAL_PARALLEL + 2))
    assert generation.requests == 2


@pytest.mark.parametrize("kind", ["completions", "chat"])
async def test_logprobs_and_top_logprobs(local_endpoint: Endpoint, kind: str) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.8, top_logprobs=3, extra_body=IGNORE_EOS)
    if kind == "chat":
        generation = await local_endpoint.chat(QUESTION, params=params)
    else:
        generation = await local_endpoint.complete(PROMPT, params=params)
    (choice,) = generation.choices
    assert choice.logprobs is not None and len(choice.logprobs) == choice.num_tokens
    for entry in choice.logprobs:
        assert entry.logprob <= 0
        assert len(entry.top) == 3
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert entry.logprob <= entry.top[0][1] + 1e-6
    assert "".join(e.token for e in choice.logprobs) == choice.raw_text


async def test_stop_sequences(local_endpoint: Endpoint) -> None:
    # The stop string is taken from what the model writes here without one (greedy, so the stopped
    # run writes the same until the stop), from the second half so that the cut keeps some text.
    prompt = "Count: 1, 2, 3, 4, 5, 6, 7,"
    free = (await local_endpoint.complete(prompt, max_tokens=30, params=GREEDY)).choices[0].text
    stop = next(
        (free[i : i + 2] for i in range(len(free) // 2, len(free) - 1) if free[i : i + 2].strip()), None
    )
    assert stop is not None, f"no stop string in {free!r}"
    generation = await local_endpoint.complete(prompt, max_tokens=30, params=GREEDY, stop=[stop])
    (choice,) = generation.choices
    assert choice.text == free[: free.index(stop)], (free, stop)
    assert stop not in choice.text
    assert choice.finish_reason == "stop"


def _sample_seeds(sent: SentBodies) -> list[int]:
    """The seed each sample of the generation requests sent so far was drawn with (sample i of a
    seeded request with n choices is drawn with seed + i), and forget those requests."""
    bodies = [body for body in sent.bodies if "max_tokens" in body]
    sent.bodies.clear()
    return [body["seed"] + i for body in bodies for i in range(body.get("n", 1))]


async def test_seed_makes_sampling_repeatable_and_choices_distinct(
    local_server: LocalLlamaServer, local_capabilities: Capabilities
) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, extra_body=IGNORE_EOS)
    sent = SentBodies()
    async with Endpoint(
        local_server.base_url, capabilities=local_capabilities, timeout=60, transport=sent
    ) as endpoint:
        first = await endpoint.complete(PROMPT, n=4, params=params)
        assert _sample_seeds(sent) == [1234, 1235, 1236, 1237]
        second = await endpoint.complete(PROMPT, n=4, params=params)
        other = await endpoint.complete(PROMPT, n=4, params=replace(params, seed=99))
        sent.bodies.clear()
        # llama.cpp draws choice i of a seeded request as a request seeded seed + i would: the
        # numbering a program's later rounds continue (SamplingParams.for_sample), so a seeded
        # program's samples do not depend on how its rounds split them. The seeds sent are checked,
        # not the texts: the server's CPU kernels may round differently for two choices in a batch
        # than for four, which can turn a near-tie token.
        head = await endpoint.complete(PROMPT, n=2, params=params)
        assert _sample_seeds(sent) == [1234, 1235]
        tail = await endpoint.complete(PROMPT, n=2, params=params.for_sample(2))
        assert _sample_seeds(sent) == [1236, 1237]
    assert first.texts == second.texts
    assert len(set(first.texts)) > 1, "the n choices under one seed must differ from each other"
    assert first.texts != other.texts
    assert len(head.texts) == len(tail.texts) == 2


async def test_chunked_token_continuation_is_exact(local_endpoint: Endpoint) -> None:
    params = GREEDY
    one_shot = await local_endpoint.complete(PROMPT, max_tokens=32, token_ids=True, params=params)
    (trajectory,) = await start_trajectories(local_endpoint, PROMPT, max_tokens=8, params=params)
    assert trajectory.mode == "tokens"
    for _ in range(3):
        await trajectory.extend(8)
    expected = one_shot.choices[0]
    assert trajectory.chunks == 4
    assert trajectory.num_tokens == expected.num_tokens == 32
    assert tuple(trajectory.token_ids) == expected.token_ids
    assert trajectory.text == expected.raw_text


async def test_chunked_text_continuation_within_one_token_per_boundary(local_endpoint: Endpoint) -> None:
    params = GREEDY
    trajectory = await Trajectory.start(local_endpoint, PROMPT, mode="text", params=params)
    for _ in range(4):
        chunk = await trajectory.extend(8)
        assert chunk.num_tokens == 8 and chunk.finish_reason == "length"
    assert trajectory.num_tokens == 32
    retokenised = len(await local_endpoint.tokenize(PROMPT + trajectory.text)) - len(
        await local_endpoint.tokenize(PROMPT)
    )
    boundaries = trajectory.chunks  # the prompt/generation seam plus three chunk seams
    assert abs(retokenised - trajectory.num_tokens) <= boundaries


async def test_chat_continuation_through_template_and_prefill(local_endpoint: Endpoint) -> None:
    params = GREEDY
    one_shot = await local_endpoint.chat(QUESTION, max_tokens=24, params=params)

    templated = await Trajectory.start(local_endpoint, messages=QUESTION, params=params)
    assert templated.mode == "tokens"  # chat template rendered by the server, then exact continuation
    for _ in range(3):
        await templated.extend(8)
    assert templated.num_tokens == 24
    assert templated.text == one_shot.choices[0].raw_text

    prefilled = await Trajectory.start(local_endpoint, messages=QUESTION, mode="prefill", params=params)
    first = await prefilled.extend(8)
    second = await prefilled.extend(8)
    assert first.text, "eight tokens after the prefill wrote nothing"
    assert prefilled.text == first.text + second.text
    assert not second.text.startswith(first.text), "llama.cpp's echo of the prefill must be stripped"
    assert prefilled.num_tokens == first.num_tokens + second.num_tokens <= 16
    assert one_shot.choices[0].raw_text.startswith(first.text.strip()[:10])


async def _wait_for_slots(server: LocalLlamaServer, busy: bool, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if (await busy_slots(server) > 0) == busy:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"slots never became {'busy' if busy else 'idle'} within {within}s")


async def test_cancelling_a_request_stops_server_work(
    local_server: LocalLlamaServer, local_endpoint: Endpoint
) -> None:
    # Requests stream by default: llama.cpp finishes a *non-streaming* request after its client left.
    await _wait_for_slots(local_server, busy=False, within=10)
    before = await predicted(local_server)
    params = SamplingParams(max_tokens=900, temperature=1.0, extra_body=IGNORE_EOS)
    task = asyncio.create_task(local_endpoint.complete(PROMPT, params=params))
    await _wait_for_slots(local_server, busy=True, within=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # A 900-token generation (it cannot end sooner) runs for seconds: an idle slot soon after the
    # cancel, with fewer than 900 tokens generated by the server, means it was aborted.
    assert await _wait_for_slots(local_server, busy=False, within=3.0) < 3.0
    assert await predicted(local_server) - before < 900


async def test_program_id_travels_with_requests(
    local_endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="dynasor_client")
    with program_scope("prog-test"):
        await local_endpoint.complete(PROMPT, n=LOCAL_PARALLEL + 1, max_tokens=2)
    records = [r for r in caplog.records if r.name.startswith("dynasor_client")]
    assert records, "splitting n must leave a debug record"
    assert all(getattr(r, "program_id", None) == "prog-test" for r in records)
    assert all(str(getattr(r, "request_id", "")).startswith("req-") for r in records)


def test_capabilities_can_be_given_instead_of_probed(local_server: LocalLlamaServer) -> None:
    given = Capabilities(max_n=2)

    async def run() -> int:
        async with Endpoint(local_server.base_url, capabilities=given) as endpoint:
            assert await endpoint.capabilities() is given
            return (await endpoint.complete(PROMPT, n=3, max_tokens=2)).requests

    assert asyncio.run(run()) == 2
