"""The no-answer floor: ``as_program(..., min_confidence=x)`` turns an answer held at a confidence
below x into "no answer" (answer None, ``abstained``), alone, under the runtime, at a deadline and
in a batch's saved lines; without it the answer comes back as before."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dynasor_client import Endpoint, Runtime, SamplingParams, StopReason, as_program
from dynasor_client.algorithms import self_consistency
from dynasor_client.program import ProgramContext, ProgramResult, algorithm
from tests.support.replay import replay_endpoint, traces_or_skip

# Never contacted: the programs below do not generate.
NOWHERE = "http://127.0.0.1:9/v1"


@algorithm
async def guess(
    answer: str, confidence: float, *, context: ProgramContext, hang: bool = False
) -> ProgramResult:
    """Reports ``answer`` at ``confidence``; then answers it, or (``hang``) waits for its deadline."""
    context.report(confidence, 1, answer)
    if hang:
        await asyncio.Event().wait()
    return context.result(answer, StopReason.CAP, answers=[answer])


async def test_an_answer_below_the_floor_is_no_answer() -> None:
    async with Endpoint(NOWHERE) as endpoint:
        garbage = await as_program(guess, "17", 0.0, min_confidence=0.5).run(endpoint)
        assert garbage.answer is None and garbage.abstained
        assert garbage.details["unconfident_answer"] == "17" and garbage.confidence == 0.0
        assert garbage.stop_reason is StopReason.CAP  # why it stopped is unchanged

        settled = await as_program(guess, "17", 0.9, min_confidence=0.5).run(endpoint)
        assert settled.answer == "17" and not settled.abstained

        at_the_floor = await as_program(guess, "17", 0.5, min_confidence=0.5).run(endpoint)
        assert at_the_floor.answer == "17" and not at_the_floor.abstained

        unfloored = await as_program(guess, "17", 0.0).run(endpoint)  # the default: no floor
        assert unfloored.answer == "17" and not unfloored.abstained


async def test_the_floor_holds_at_a_deadline_and_under_the_runtime(tmp_path: Path) -> None:
    async with Endpoint(NOWHERE) as endpoint:
        late = await as_program(guess, "3", 0.1, hang=True, min_confidence=0.5).run(endpoint, deadline_s=0.05)
        assert late.partial and late.stop_reason is StopReason.DEADLINE
        assert late.answer is None and late.abstained and late.details["unconfident_answer"] == "3"

        saved = tmp_path / "results.jsonl"
        async with Runtime(endpoint) as runtime:
            batch = await runtime.run_batch(
                [as_program(guess, str(c), c / 10, min_confidence=0.5) for c in range(10)],
                progress=False, save_to=saved,
            )  # fmt: skip
    assert [r.answer for r in batch] == [None] * 5 + ["5", "6", "7", "8", "9"]  # iterable, in order
    lines = {line["index"]: line for line in map(json.loads, saved.read_text().splitlines())}
    assert [lines[i]["abstained"] for i in range(10)] == [True] * 5 + [False] * 5
    assert lines[0]["answer"] is None and lines[0]["details"]["unconfident_answer"] == "0"


def test_a_floor_must_be_a_number() -> None:
    with pytest.raises(ValueError, match="min_confidence"):
        as_program(guess, "1", 0.0, min_confidence=float("nan"))


async def test_self_consistency_on_recorded_samples() -> None:
    # Recorded real-model samples served over HTTP by the replay engine (seeded, so the same every
    # run; the local 135M model sometimes writes no answer at all, which would make this vacuous).
    # Confidence is at most 1.0: above it every answer is refused, at 0.0 none is.
    question = traces_or_skip("svamp-codex-sc30.jsonl")[0]
    async with replay_endpoint([question], seed=3) as endpoint:
        refused, kept = [
            await as_program(self_consistency, question.question, n=8, min_confidence=floor).run(endpoint)
            for floor in (1.01, 0.0)
        ]
    assert any(a is not None for a in refused.answers)  # the model did answer...
    assert refused.answer is None and refused.abstained  # ...and the floor refused it
    assert refused.details["unconfident_answer"] is not None and refused.confidence <= 1.0
    assert kept.answer is not None and not kept.abstained and "unconfident_answer" not in kept.details


async def test_the_floor_on_the_local_model(local_endpoint: Endpoint) -> None:
    # The same floor over a live llama.cpp server; whether the 135M model answers varies by machine.
    params = SamplingParams(max_tokens=16, temperature=0.0)
    refused = await as_program(self_consistency, "2 + 2 =", n=2, params=params, min_confidence=1.01).run(
        local_endpoint
    )
    assert refused.answer is None
    assert refused.abstained == (refused.details.get("unconfident_answer") is not None)
